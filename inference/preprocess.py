"""A decoded image -> the pixel values transformers' BLIP image processor gives the model, bit for bit, cheaply.

The processor (its PIL backend, the one BLIP's own code used) copies the image into a full-resolution
NumPy array and back into a PIL image, resizes it (PIL, bicubic), rescales the result to float64, casts
it to float32 and normalises it. Only the resize needs the image. After it, each channel's 8-bit value
maps to one float through fixed arithmetic, so that map is a 256-entry table per channel, computed once
by the processor's own rescale and normalise: the model's input is the resized 8-bit image looked up in
the table. On the CPU the lookup runs on the decode threads; on a GPU the 8-bit image is what crosses
the bus (a quarter of the float32 bytes) and the lookup runs there.

A processor configured beyond what BLIP checkpoints use (a crop, padding, a shortest-edge size) is run
as it is, slowly, instead of guessed at.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


class Preprocessing(Protocol):
    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) an image can be decoded down to (a JPEG decoded at a reduced scale stays at least this
        large); None when the processor's output size is not known ahead."""
        ...

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One decoded image (RGB, no transparency) -> (3, H, W) on the CPU, ready for `pixel_values`."""
        ...

    def pixel_values(self, prepared: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Prepared images -> the model's (B, 3, H, W) input on `device`, in `dtype`."""
        ...


def preprocessing_for(image_processor: Any, device: torch.device) -> Preprocessing:
    try:
        return TablePreprocessing.of(image_processor, on_device=device.type != "cpu")
    except ValueError as exc:
        log.info("image preprocessing through transformers' processor (%s)", exc)
        return ProcessorPreprocessing(image_processor)


class TablePreprocessing:
    def __init__(self, size: tuple[int, int], resample: int, table: np.ndarray, *, on_device: bool) -> None:
        """`table`: (3, 256) float32, each channel's value for each 8-bit input. `on_device`: hand 8-bit images
        to `pixel_values` and look them up there (a GPU), instead of in `prepare` (the CPU)."""
        self.size = size
        self.resample = resample
        self.table = table
        self.on_device = on_device
        self._tables: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def of(cls, processor: Any, *, on_device: bool) -> TablePreprocessing:
        """ValueError naming the setting this path does not reproduce."""
        if getattr(processor, "backend", "pil") != "pil":
            raise ValueError(f"the {processor.backend} backend")
        for setting in ("do_center_crop", "do_pad"):
            if getattr(processor, setting, None):
                raise ValueError(setting)
        if not processor.do_resize:
            raise ValueError("no resize")
        height, width = _size_entry(processor.size, "height"), _size_entry(processor.size, "width")
        if not height or not width:
            raise ValueError(f"size {processor.size}")
        values = np.tile(np.arange(256, dtype=np.uint8), (3, 1, 1))  # a (3, 1, 256) channel-first image
        if processor.do_rescale:
            values = processor.rescale(values, processor.rescale_factor)
        if processor.do_normalize:
            values = processor.normalize(values, processor.image_mean, processor.image_std)
        if values.dtype != np.float32:
            raise ValueError(f"{values.dtype} pixel values")
        return cls((int(width), int(height)), int(processor.resample), values[:, 0, :].copy(), on_device=on_device)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB" or "transparency" in image.info:
            raise ValueError(f"preprocessing takes RGB images without transparency, not {image.mode}")
        resized = np.asarray(image.resize(self.size, resample=self.resample))
        channels = np.ascontiguousarray(resized.transpose(2, 0, 1))
        if self.on_device:
            return torch.from_numpy(channels)
        looked_up = np.empty(channels.shape, dtype=np.float32)
        for channel in range(3):
            np.take(self.table[channel], channels[channel], out=looked_up[channel])
        return torch.from_numpy(looked_up)

    def pixel_values(self, prepared: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        batch = torch.stack(list(prepared))
        if batch.dtype == torch.uint8:
            if device.type == "cuda":
                batch = batch.pin_memory()  # so the copy overlaps instead of blocking
            batch = batch.to(device, non_blocking=True)
            flat = self._table_on(device)
            offsets = torch.tensor([0, 256, 512], dtype=torch.int32, device=device).view(1, 3, 1, 1)
            batch = flat[(batch.to(torch.int32) + offsets).long()]
        return batch.to(device=device, dtype=dtype)

    def _table_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = torch.from_numpy(self.table.reshape(-1)).to(device)
        return self._tables[device]


class ProcessorPreprocessing:
    """The processor itself, for configurations the table path does not cover."""

    def __init__(self, image_processor: Any) -> None:
        self.processor = image_processor
        size = image_processor.size
        width, height, shortest = (_size_entry(size, name) for name in ("width", "height", "shortest_edge"))
        self.size: tuple[int, int] | None = (width, height) if width and height else None
        if self.size is None and shortest:
            self.size = (shortest, shortest)  # the shorter side is resized to it: neither side may go below

    def prepare(self, image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = self.processor(images=image, return_tensors="pt")["pixel_values"]
        return pixels[0]

    def pixel_values(self, prepared: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        batch = torch.stack(list(prepared))
        if device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(device=device, dtype=dtype, non_blocking=True)


def _size_entry(size: Any, name: str) -> int | None:
    """A size setting's entry: transformers keeps them in a SizeDict (5.x) or a plain dict."""
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return int(value) if value else None
