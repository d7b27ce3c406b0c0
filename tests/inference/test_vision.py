"""Choosing the vision encoder: a TensorRT engine only where its manifest fits this GPU, these versions and
these weights; `auto` falls back to torch, `tensorrt` refuses, both with the reason."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import pytest
import torch

from blipq.contract.errors import ModelUnavailable
from blipq.inference.vision import (
    MANIFEST,
    PROGRAM,
    BatchRange,
    Environment,
    Manifest,
    Validation,
    choose_vision_encoder,
    mismatches,
    unusable_reason,
    weights_sha256,
)

H100 = Environment(
    torch="2.14.0", torch_tensorrt="2.14.0", tensorrt="10.13.0", cuda="12.8", gpu_name="NVIDIA H100", gpu_sm="sm90"
)


def manifest_for(environment: Environment, weights: str) -> Manifest:
    return Manifest(
        checkpoint="Salesforce/blip-image-captioning-large",
        weights_sha256=weights,
        image_size=384,
        dtype="float16",
        batch=BatchRange(min=1, opt=32, max=64),
        torch=environment.torch,
        torch_tensorrt=environment.torch_tensorrt or "",
        tensorrt=environment.tensorrt or "",
        cuda=environment.cuda or "",
        gpu_name=environment.gpu_name or "",
        gpu_sm=environment.gpu_sm or "",
        validation=Validation(cosine=0.9995, max_abs_diff=0.02, exact_caption_rate=0.99, images=100),
    )


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, copy)
    return copy


def install_engine(checkpoint: Path, manifest: Manifest) -> Path:
    folder = checkpoint / "engines" / H100.engine_folder()
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text(manifest.model_dump_json(), encoding="utf-8")
    (folder / PROGRAM).write_bytes(b"a program")
    return folder


def test_a_fitting_manifest_has_no_mismatch_and_each_difference_is_named(checkpoint: Path) -> None:
    weights = weights_sha256(checkpoint)
    fits = manifest_for(H100, weights)
    assert mismatches(fits, H100, torch.float16, weights) == []
    cases = {
        "built for NVIDIA H100 (sm90), this is NVIDIA A100": dataclasses.replace(
            H100, gpu_name="NVIDIA A100", gpu_sm="sm80"
        ),
        "built with torch_tensorrt 2.14.0, here 2.15.0": dataclasses.replace(H100, torch_tensorrt="2.15.0"),
        "built with tensorrt 10.13.0, here 10.14.0": dataclasses.replace(H100, tensorrt="10.14.0"),
        "built with torch 2.14.0, here 2.14.1": dataclasses.replace(H100, torch="2.14.1"),
        "built with cuda 12.8, here 12.9": dataclasses.replace(H100, cuda="12.9"),
    }
    for expected, environment in cases.items():
        assert expected in mismatches(fits, environment, torch.float16, weights)
    assert "built for float16, this process runs float32" in mismatches(fits, H100, torch.float32, weights)
    assert "built from other weights (the weights hash differs)" in mismatches(fits, H100, torch.float16, "0" * 64)


def test_the_reason_an_engine_cannot_run(checkpoint: Path) -> None:
    cpu = Environment.here(torch.device("cpu"))
    assert unusable_reason(checkpoint, cpu, torch.float32) == "no CUDA device"
    no_trt = dataclasses.replace(H100, torch_tensorrt=None)
    assert "torch-tensorrt is not installed" in (unusable_reason(checkpoint, no_trt, torch.float16) or "")
    assert "no engine in" in (unusable_reason(checkpoint, H100, torch.float16) or "")
    install_engine(checkpoint, manifest_for(H100, weights_sha256(checkpoint)))
    assert unusable_reason(checkpoint, H100, torch.float16) is None
    other_gpu = dataclasses.replace(H100, gpu_name="NVIDIA H200")
    assert "does not fit: built for NVIDIA H100" in (unusable_reason(checkpoint, other_gpu, torch.float16) or "")
    (checkpoint / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes() + b" ")
    assert "other weights" in (unusable_reason(checkpoint, H100, torch.float16) or "")


def test_auto_falls_back_to_torch_with_one_line_and_tensorrt_refuses(
    checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cpu = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="blipq.inference.vision"):
        assert choose_vision_encoder("auto", checkpoint, cpu, torch.float32) is None
    assert [record.getMessage() for record in caplog.records] == ["vision encoder: torch (no CUDA device)"]
    assert choose_vision_encoder("torch", checkpoint, cpu, torch.float32) is None
    with pytest.raises(ModelUnavailable, match=r"^--vision-engine tensorrt: no CUDA device$"):
        choose_vision_encoder("tensorrt", checkpoint, cpu, torch.float32)
