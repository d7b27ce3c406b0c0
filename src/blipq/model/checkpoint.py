"""Find a checkpoint on disk, downloading a hub id once into the checkpoints directory."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from blipq.errors import ModelUnavailable

#: Files a checkpoint directory needs; weights may be safetensors or a PyTorch pickle.
REQUIRED_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def is_complete_checkpoint(path: Path) -> bool:
    """True when `path` holds a config, a processor config and weights."""
    return all((path / name).is_file() for name in REQUIRED_FILES) and any(
        (path / name).is_file() for name in WEIGHT_FILES
    )


def cache_path(hub_id: str, checkpoints_dir: Path) -> Path:
    """Where a hub checkpoint lives locally: `<checkpoints_dir>/<owner>/<name>`."""
    owner, name = hub_id.split("/")
    return checkpoints_dir / owner / name


def resolve_checkpoint(model: str, checkpoints_dir: Path, *, download: bool = True) -> Path:
    """Turn `--model` into a local directory.

    A directory is used as it is. A hub id is looked up in `checkpoints_dir` and, when missing,
    downloaded there once (with a progress bar); every later start reads it from disk.
    """
    local = Path(model).expanduser()
    if local.is_dir():
        if not is_complete_checkpoint(local):
            raise ModelUnavailable(_incomplete_message(local))
        return local
    if not _HUB_ID.match(model):
        raise ModelUnavailable(
            f"--model {model!r} is neither an existing checkpoint directory nor a Hugging Face hub id "
            "like 'Salesforce/blip-image-captioning-large'"
        )
    target = cache_path(model, checkpoints_dir)
    if is_complete_checkpoint(target):
        return target
    if not download:
        raise ModelUnavailable(_missing_message(model, target, reason="downloading is disabled"))
    return download_checkpoint(model, target)


def download_checkpoint(hub_id: str, target: Path) -> Path:
    """Download `hub_id` into `target` atomically: a half-finished download never looks complete."""
    from huggingface_hub import snapshot_download

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        snapshot_download(hub_id, local_dir=staging, allow_patterns=_DOWNLOAD_PATTERNS)
        if not any((staging / name).is_file() for name in WEIGHT_FILES):
            # Older repositories only have PyTorch pickles.
            snapshot_download(hub_id, local_dir=staging, allow_patterns=["pytorch_model.bin"])
        shutil.rmtree(staging / ".cache", ignore_errors=True)
        if not is_complete_checkpoint(staging):
            raise ModelUnavailable(f"{hub_id} downloaded but is not a BLIP checkpoint: {_incomplete_message(staging)}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        return target
    except ModelUnavailable:
        raise
    except Exception as exc:  # the hub client raises many types for "offline", "not found", "denied"
        reason = f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ModelUnavailable(_missing_message(hub_id, target, reason=reason)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _missing_message(hub_id: str, target: Path, *, reason: str) -> str:
    return (
        f"checkpoint {hub_id!r} is not in {target} and {reason}.\n"
        f"On a machine with internet access run:\n"
        f"    blipq download {hub_id} --checkpoints-dir ./checkpoints\n"
        f"then copy ./checkpoints/{hub_id} to {target}. The directory must contain config.json, "
        f"preprocessor_config.json, the tokenizer files (vocab.txt / tokenizer.json, tokenizer_config.json) "
        f"and model.safetensors (or pytorch_model.bin). Or pass --model /path/to/checkpoint-dir."
    )


def _incomplete_message(path: Path) -> str:
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    return f"{path} is not a complete BLIP checkpoint (missing: {', '.join(missing)})"
