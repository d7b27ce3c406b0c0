from __future__ import annotations

import pytest
import torch

from blipq.contract.images import ImagePolicy
from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from blipq.inference.offline import caption_sources
from tests.helpers import encode, varied_images


def _files() -> dict[str, bytes]:
    files = {f"img{i}.png": encode(image, "PNG") for i, image in enumerate(varied_images())}
    files["broken.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    return files


def test_rows_come_back_in_order_with_errors_in_place(engine: CaptionEngine) -> None:
    files = _files()
    order = ["img0.png", "broken.jpg", "img1.png", "img2.png", "missing.png", "img3.png", "img4.png", "img5.png"]

    def read(name: str) -> bytes:
        if name not in files:
            raise FileNotFoundError(name)  # an unexpected exception type must not stop the run
        return files[name]

    options = CaptionOptions(num_beams=1)
    rows = list(caption_sources(engine, order, options, read=read, policy=ImagePolicy(), batch_size=3))
    assert [row.source for row in rows] == order
    good = [name for name in order if name.startswith("img")]
    expected = engine.caption([decode_image(files[name]) for name in good], options)
    assert [row.caption for row in rows if row.error is None] == expected
    errors = {row.source: row.error for row in rows if row.error is not None}
    assert errors["broken.jpg"] is not None
    assert errors["broken.jpg"].code == "invalid_image"
    assert errors["missing.png"] is not None
    assert "FileNotFoundError" in errors["missing.png"].message


def test_an_image_the_model_fails_on_fails_alone(engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _files()
    names = [f"img{i}.png" for i in range(6)]
    poisoned = engine.prepare(decode_image(files["img4.png"]))
    real_generate = engine.generate
    batch_sizes: list[int] = []

    def fails_on_img4(prepared: list[torch.Tensor], options: CaptionOptions) -> list[list[int]]:
        batch_sizes.append(len(prepared))
        if any(torch.equal(tensor, poisoned) for tensor in prepared):
            raise RuntimeError("CUDA error: an illegal memory access (simulated)")
        return real_generate(prepared, options)

    monkeypatch.setattr(engine, "generate", fails_on_img4)
    rows = list(
        caption_sources(engine, names, CaptionOptions(), read=files.__getitem__, policy=ImagePolicy(), batch_size=6)
    )
    monkeypatch.undo()
    assert [row.error.code if row.error else "ok" for row in rows] == ["ok"] * 4 + ["model_error", "ok"]
    assert rows[4].error is not None
    assert "illegal memory access" in rows[4].error.message
    good = [files[name] for name in names if name != "img4.png"]
    expected = engine.caption([decode_image(data) for data in good], CaptionOptions())
    assert [row.caption for row in rows if row.error is None] == expected
    assert batch_sizes == [6, 3, 3, 1, 2, 1, 1]  # halves until img4 is alone
