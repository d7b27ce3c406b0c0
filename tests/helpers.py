"""Deterministic test images: varied sizes, modes and formats, encoded to real file bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


def encode(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def drawing(width: int, height: int, background: str, shape: str) -> Image.Image:
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 5, height // 5, width * 4 // 5, height * 4 // 5), fill=shape)
    draw.rectangle((0, 0, width // 6, height // 6), fill="black")
    return image


def varied_images() -> list[Image.Image]:
    """Six RGB images that differ in size, aspect ratio and content (and originally in mode)."""
    return [
        noise(640, 480, seed=1),
        drawing(1200, 900, "white", "green"),
        drawing(37, 53, "navy", "orange"),
        noise(300, 300, seed=2, mode="L").convert("RGB"),
        Image.new("RGB", (500, 200), "red"),
        noise(256, 512, seed=3, mode="RGBA").convert("RGB"),
    ]


def grey16(width: int, height: int, seed: int) -> Image.Image:
    """A 16-bit greyscale image using the full 0..65535 range."""
    pixels = np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)
    return Image.fromarray(pixels)


def pictures(n: int) -> list[bytes]:
    """`n` distinct small PNG files."""
    colours = ["red", "green", "blue", "white", "black", "orange", "purple", "yellow", "navy", "pink"]
    return [
        encode(drawing(80 + 7 * i, 60 + 3 * i, colours[i % 10], colours[(i * 3 + 1) % 10]), "PNG") for i in range(n)
    ]


def png_declaring(width: int, height: int) -> bytes:
    """A small valid PNG whose header is rewritten to claim a huge size (a decompression bomb)."""
    data = bytearray(encode(Image.new("L", (8, 8)), "PNG"))
    ihdr_start = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    body = bytes(data[ihdr_start - 4 : ihdr_start + 13])
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)
