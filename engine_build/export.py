"""BLIP's vision encoder as a standalone graph with a dynamic batch: the input of the TensorRT build, and a
file format (`torch.export.save`/`load`) the inference side loads back."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram
from transformers import BlipForConditionalGeneration


class VisionEncoder(torch.nn.Module):
    """pixel_values (batch, 3, H, W) -> last_hidden_state (batch, patches + 1, hidden), a plain tensor."""

    def __init__(self, model: BlipForConditionalGeneration) -> None:
        super().__init__()
        self.vision_model = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden: torch.Tensor = self.vision_model(pixel_values=pixel_values)[0]
        return hidden


def export_vision_encoder(
    model: BlipForConditionalGeneration, *, max_batch: int, device: torch.device, dtype: torch.dtype
) -> ExportedProgram:
    """Export with the batch dimension dynamic from 1 to `max_batch`. The example batch has 2 images: with
    one, export would specialise the graph to a batch of 1."""
    size = model.config.vision_config.image_size
    example = torch.zeros(2, 3, size, size, device=device, dtype=dtype)
    encoder = VisionEncoder(model).eval()
    batch = Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(encoder, (example,), dynamic_shapes={"pixel_values": {0: batch}})


def save_program(program: ExportedProgram, path: Path) -> None:
    torch.export.save(program, path)


def load_program(path: Path) -> torch.nn.Module:
    module: torch.nn.Module = torch.export.load(path).module()
    return module
