from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blipq.contract.errors import ModelUnavailable
from blipq.contract.options import CaptionOptions
from blipq.engine_build.checkpoint import cache_path, resolve_checkpoint, share_readably
from blipq.engine_build.synthetic import write_test_checkpoint
from blipq.inference.engine import CaptionEngine
from tests.engine_build.hub_server import HubServer
from tests.helpers import varied_images


def test_a_local_directory_is_used_as_it_is(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(str(tiny_checkpoint), tmp_path / "unused") == tiny_checkpoint


def test_an_incomplete_directory_says_what_is_missing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"complete BLIP checkpoint \(missing: weights \(model.safetensors or"):
        resolve_checkpoint(str(broken), tmp_path)


def test_a_hub_id_already_in_the_checkpoints_dir_needs_no_network(tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = cache_path("Salesforce/blip-image-captioning-large", tmp_path)
    shutil.copytree(tiny_checkpoint, target)
    assert target == tmp_path / "Salesforce" / "blip-image-captioning-large"
    assert resolve_checkpoint("Salesforce/blip-image-captioning-large", tmp_path, download=False) == target


def test_not_a_path_nor_a_hub_id(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="neither an existing checkpoint directory nor a Hugging Face hub id"):
        resolve_checkpoint("./no/such/dir/here", tmp_path)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_offline_without_the_checkpoint_explains_how_to_get_it(tmp_path: Path) -> None:
    """Through the real CLI, with the hub endpoint pointed at a closed loopback port."""
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_DISABLE_XET": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "blipq", "download", "Salesforce/blip-image-captioning-base",
         "--checkpoints-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"is not in {tmp_path}/Salesforce/blip-image-captioning-base and download failed" in message
    assert "blipq download Salesforce/blip-image-captioning-base --checkpoints-dir ./checkpoints" in message
    assert "Traceback" not in result.stderr
    # Nothing half-downloaded is left behind to be mistaken for a checkpoint.
    assert not (tmp_path / "Salesforce" / "blip-image-captioning-base").exists()
    assert list((tmp_path / "Salesforce").iterdir()) == []


@pytest.fixture(scope="module")
def saved_by_transformers(engine: CaptionEngine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by the installed transformers' own `save_pretrained`, as a fine-tuning run leaves it."""
    directory = tmp_path_factory.mktemp("fine-tuned")
    engine.model.save_pretrained(directory)
    engine.processor.save_pretrained(directory)
    return directory


def test_a_checkpoint_saved_by_transformers_loads_and_captions_alike(
    saved_by_transformers: Path, engine: CaptionEngine, tmp_path: Path
) -> None:
    assert resolve_checkpoint(str(saved_by_transformers), tmp_path / "unused") == saved_by_transformers
    reloaded = CaptionEngine.load(saved_by_transformers, device="cpu", dtype="fp32")
    images = varied_images()[:2]
    options = CaptionOptions()
    assert reloaded.caption(images, options) == engine.caption(images, options)


def test_the_older_layout_with_preprocessor_config_loads(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Salesforce's checkpoints: preprocessor_config.json and no processor_config.json."""
    older = tmp_path / "older"
    shutil.copytree(tiny_checkpoint, older, ignore=shutil.ignore_patterns("processor_config.json"))
    assert resolve_checkpoint(str(older), tmp_path) == older
    CaptionEngine.load(older, device="cpu", dtype="fp32")


def test_a_processor_config_without_the_image_processor_is_not_enough(
    saved_by_transformers: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(saved_by_transformers, broken)
    (broken / "processor_config.json").write_text('{"processor_class": "BlipProcessor"}')
    with pytest.raises(ModelUnavailable, match=r"missing: image processor config \(preprocessor_config.json or"):
        resolve_checkpoint(str(broken), tmp_path)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(root: Path) -> set[tuple[str, int]]:
    return {(path.name, stat.S_IMODE(path.stat().st_mode)) for path in [root, *root.rglob("*")]}


def test_test_model_files_are_readable_by_other_users(tmp_path: Path, umask_022: None) -> None:
    """A container's non-root user must read weights another user wrote (transformers writes them 0600)."""
    written = write_test_checkpoint(tmp_path / "tiny", size="tiny")
    modes = _modes(written)
    assert ("model.safetensors", 0o644) in modes
    assert {mode for name, mode in modes if name != "tiny"} == {0o644}
    assert ("tiny", 0o755) in modes


def test_a_staging_folder_gets_ordinary_modes_and_a_strict_umask_is_kept(tmp_path: Path, umask_022: None) -> None:
    staging = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700, as the download's staging folder is made
    (staging / "sub").mkdir(mode=0o700)
    (staging / "sub" / "weights.bin").write_bytes(b"w")
    (staging / "sub" / "weights.bin").chmod(0o600)
    share_readably(staging)
    assert {mode for _, mode in _modes(staging)} == {0o755, 0o644}
    os.umask(0o077)
    share_readably(staging)
    assert {mode for _, mode in _modes(staging)} == {0o700, 0o600}


def test_a_download_is_complete_loadable_and_readable_by_other_users(
    tiny_checkpoint: Path, tmp_path: Path, umask_022: None
) -> None:
    """`blipq download` through the real hub client, from a loopback server answering the hub's API."""
    hub_id = "Salesforce/blip-image-captioning-base"
    with HubServer(hub_id, tiny_checkpoint) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        result = subprocess.run(
            [sys.executable, "-m", "blipq", "download", hub_id, "--checkpoints-dir", str(tmp_path)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    target = cache_path(hub_id, tmp_path)
    assert resolve_checkpoint(hub_id, tmp_path, download=False) == target
    assert {mode for _, mode in _modes(tmp_path / "Salesforce")} == {0o755, 0o644}
    assert ("model.safetensors", 0o644) in _modes(target)
    CaptionEngine.load(target, device="cpu", dtype="fp32")
