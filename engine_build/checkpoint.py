"""Find a checkpoint on disk, downloading a hub id once into the checkpoints directory."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from blipq.contract.errors import ModelUnavailable

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
#: What a checkpoint directory needs, each part by any of the file names transformers loads it from.
#: The image processor's settings sit in preprocessor_config.json (the layout Salesforce's checkpoints
#: and transformers 4 wrote) or inside processor_config.json (what `BlipProcessor.save_pretrained`
#: writes since transformers 5).
CHECKPOINT_PARTS: dict[str, tuple[str, ...]] = {
    "model config": ("config.json",),
    "image processor config": ("preprocessor_config.json", "processor_config.json"),
    "tokenizer": ("tokenizer.json", "vocab.txt"),
    "weights": WEIGHT_FILES,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def missing_parts(path: Path) -> list[str]:
    """The parts of a checkpoint `path` lacks, each as "what (file or file)"; empty when it is complete."""
    return [
        f"{part} ({' or '.join(names)})"
        for part, names in CHECKPOINT_PARTS.items()
        if not any(_holds(path, name) for name in names)
    ]


def is_complete_checkpoint(path: Path) -> bool:
    return not missing_parts(path)


def _holds(path: Path, name: str) -> bool:
    """`name` is there; processor_config.json counts only when it carries the image processor's settings
    (older transformers wrote one holding just the processor class)."""
    file = path / name
    if not file.is_file():
        return False
    if name != "processor_config.json":
        return True
    try:
        settings = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(settings, dict) and "image_processor" in settings


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
        share_readably(staging)
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


def share_readably(root: Path) -> None:
    """Give `root` and everything under it the modes an ordinary file gets under the user's umask.

    Temporary folders (the download's staging directory) are created 0700 and transformers writes
    weights through a 0600 temporary file, whatever the umask; with the usual umask 022 this makes
    folders 0755 and files 0644, so a container's non-root user can read weights written by another
    user. A stricter umask the user set (077, say) is kept.
    """
    umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _missing_message(hub_id: str, target: Path, *, reason: str) -> str:
    return (
        f"checkpoint {hub_id!r} is not in {target} and {reason}.\n"
        f"On a machine with internet access run:\n"
        f"    blipq download {hub_id} --checkpoints-dir ./checkpoints\n"
        f"then copy ./checkpoints/{hub_id} to {target}. The directory must contain config.json, "
        f"preprocessor_config.json or processor_config.json, the tokenizer files (tokenizer.json or vocab.txt, "
        f"tokenizer_config.json) and model.safetensors (or pytorch_model.bin). "
        f"Or pass --model /path/to/checkpoint-dir."
    )


def _incomplete_message(path: Path) -> str:
    return f"{path} is not a complete BLIP checkpoint (missing: {', '.join(missing_parts(path))})"
