"""The command line's options: each names a setting (its flag overrides the setting's BLIPQ_* variable)
or a caption option, and its help reads the default from there, so it stays true."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from blipq.contract.options import CaptionOptions
from blipq.contract.settings import SharedSettings
from blipq.inference.settings import InferenceSettings


def setting_option(kind: type[SharedSettings], name: str, flag: str, summary: str, *aliases: str) -> Any:
    """An option for a settings field: left out, the field's environment variable or default applies,
    and the help says both (read from the settings class, so it stays true)."""
    default = kind.model_fields[name].get_default(call_default_factory=True)
    # "\[" keeps rich from taking the brackets for markup.
    help_text = f"{summary} \\[env BLIPQ_{name.upper()}; default: {default}]"
    return typer.Option(flag, *aliases, help=help_text, show_default=False)


def generation_option(name: str, summary: str) -> Any:
    """An option for a `CaptionOptions` field, its default read from there."""
    default = CaptionOptions.model_fields[name].default
    return typer.Option(f"--{name.replace('_', '-')}", help=f"{summary} \\[default: {default!r}]", show_default=False)


ModelOpt = Annotated[
    str | None, setting_option(InferenceSettings, "model", "--model", "Checkpoint directory or hub id.")
]
CheckpointsOpt = Annotated[
    Path | None,
    setting_option(InferenceSettings, "checkpoints_dir", "--checkpoints-dir", "Where hub checkpoints are stored."),
]
DeviceOpt = Annotated[
    str | None, setting_option(InferenceSettings, "device", "--device", "auto, cpu, cuda, cuda:N or mps.")
]
DtypeOpt = Annotated[str | None, setting_option(InferenceSettings, "dtype", "--dtype", "auto, fp32, fp16 or bf16.")]
VisionEngineOpt = Annotated[
    str | None,
    setting_option(
        InferenceSettings, "vision_engine", "--vision-engine", "auto, torch or tensorrt (see build-engine)."
    ),
]
MaxBatchOpt = Annotated[
    int | None, setting_option(InferenceSettings, "max_batch", "--max-batch", "Images per model call.")
]
DecodeThreadsOpt = Annotated[
    int | None,
    setting_option(
        InferenceSettings, "decode_threads", "--decode-threads", "Threads decoding images; 0 = one per CPU."
    ),
]
TorchThreadsOpt = Annotated[
    int | None,
    setting_option(
        InferenceSettings, "torch_threads", "--torch-threads", "torch's CPU threads; 0 = 1 beside a GPU, else all."
    ),
]
DecoderOpt = Annotated[
    str | None,
    setting_option(InferenceSettings, "decoder", "--decoder", "blipq (its own search) or transformers (generate)."),
]
FastDecodeOpt = Annotated[
    bool | None,
    setting_option(
        InferenceSettings, "fast_decode", "--fast-decode/--exact-decode", "Decode large JPEGs at a reduced scale."
    ),
]


BrokerOpt = Annotated[
    str | None,
    setting_option(
        SharedSettings, "broker_url", "--broker", "RabbitMQ URL; unset = embedded mode, all in this process."
    ),
]
BatchWaitOpt = Annotated[
    int | None, setting_option(InferenceSettings, "batch_wait_ms", "--batch-wait-ms", "Milliseconds to fill a batch.")
]
