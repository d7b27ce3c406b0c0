from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from blipq.errors import ModelUnavailable
from blipq.model.checkpoint import cache_path, resolve_checkpoint


def test_a_local_directory_is_used_as_it_is(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(str(tiny_checkpoint), tmp_path / "unused") == tiny_checkpoint


def test_an_incomplete_directory_says_what_is_missing(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"not a complete BLIP checkpoint \(missing: model.safetensors"):
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
