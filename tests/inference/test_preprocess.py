"""The engine's preprocessing gives the model exactly the pixel values of transformers' BLIP image processor
(its PIL backend) for every kind of image the decoder hands over, and never full-resolution float arrays."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from transformers import BlipImageProcessorPil

from blipq.inference.decode import decode_image
from blipq.inference.preprocess import ProcessorPreprocessing, TablePreprocessing, preprocessing_for
from tests.helpers import drawing, encode, grey16, noise

CPU = torch.device("cpu")


def sources() -> dict[str, bytes]:
    """Files of every mode Pillow opens, odd sizes included, through real encoders."""
    rgba = noise(300, 200, seed=3, mode="RGBA")
    grey = noise(257, 131, seed=4, mode="L")
    palette = drawing(200, 150, "yellow", "purple").convert("P")
    rgb_with_trns = drawing(120, 90, "white", "green")
    cmyk = noise(64, 48, seed=5).convert("CMYK")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    wide = np.random.default_rng(6).integers(-(2**20), 2**20, (33, 47), dtype=np.int32)
    floats = np.random.default_rng(7).normal(size=(40, 30)).astype(np.float32)
    return {
        "rgb jpeg": encode(noise(640, 480, seed=1), "JPEG", quality=90),
        "large rgb jpeg": encode(noise(2000, 1500, seed=2), "JPEG", quality=85),
        "rgb png 384": encode(noise(384, 384, seed=8), "PNG"),
        "rgb png 383x385": encode(noise(383, 385, seed=9), "PNG"),
        "1x1": encode(Image.new("RGB", (1, 1), "green"), "PNG"),
        "1x500": encode(noise(1, 500, seed=10), "PNG"),
        "500x1": encode(noise(500, 1, seed=11), "PNG"),
        "L": encode(grey, "PNG"),
        "L with tRNS": encode(grey, "PNG", transparency=128),
        "LA": encode(noise(90, 70, seed=12, mode="RGBA").convert("LA"), "PNG"),
        "P": encode(palette, "GIF"),
        "P with transparency": encode(palette, "PNG", transparency=0),
        "RGB with tRNS": encode(rgb_with_trns, "PNG", transparency=(255, 255, 255)),
        "RGBA": encode(rgba, "PNG"),
        "RGBA webp": encode(rgba, "WEBP", lossless=True),
        "CMYK jpeg": encode(cmyk, "JPEG", quality=95),
        "CMYK tiff with ICC": encode(cmyk, "TIFF", icc_profile=srgb),
        "I;16": encode(grey16(90, 60, seed=13), "PNG"),
        "I": encode(Image.fromarray(wide, mode="I"), "TIFF"),
        "F": encode(Image.fromarray(floats, mode="F"), "TIFF"),
        "1": encode(noise(50, 40, seed=14, mode="L").convert("1"), "BMP"),
        "bmp 37x53": encode(drawing(37, 53, "navy", "orange"), "BMP"),
    }


@pytest.fixture(scope="module")
def processor(tiny_checkpoint: Path) -> BlipImageProcessorPil:
    return BlipImageProcessorPil.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("on_device", [False, True], ids=["lookup on the decode thread", "lookup in the batch"])
@pytest.mark.parametrize("name", list(sources()))
def test_pixel_values_equal_the_processors_bit_for_bit(
    processor: BlipImageProcessorPil, name: str, on_device: bool
) -> None:
    image = decode_image(sources()[name])
    preprocessing = TablePreprocessing.of(processor, on_device=on_device)
    ours = preprocessing.pixel_values([preprocessing.prepare(image)], CPU, torch.float32)
    reference = processor(images=image, return_tensors="pt")["pixel_values"]
    assert ours.dtype == reference.dtype == torch.float32
    assert ours.shape == reference.shape == (1, 3, 384, 384)
    assert torch.equal(ours, reference), f"largest difference {(ours - reference).abs().max().item()}"


def test_a_batch_is_its_images_stacked(processor: BlipImageProcessorPil) -> None:
    images = [decode_image(data) for data in list(sources().values())[:6]]
    preprocessing = TablePreprocessing.of(processor, on_device=True)
    batch = preprocessing.pixel_values([preprocessing.prepare(image) for image in images], CPU, torch.float32)
    assert torch.equal(batch, processor(images=images, return_tensors="pt")["pixel_values"])


def test_the_gpu_receives_bytes_not_floats(processor: BlipImageProcessorPil) -> None:
    image = decode_image(sources()["rgb jpeg"])
    assert TablePreprocessing.of(processor, on_device=True).prepare(image).dtype == torch.uint8
    assert TablePreprocessing.of(processor, on_device=False).prepare(image).dtype == torch.float32


def test_settings_the_table_does_not_reproduce_go_through_the_processor(processor: BlipImageProcessorPil) -> None:
    assert isinstance(preprocessing_for(processor, CPU), TablePreprocessing)
    cropping = BlipImageProcessorPil(do_center_crop=True, crop_size={"height": 300, "width": 300})
    shortest_edge = BlipImageProcessorPil(size={"shortest_edge": 384})
    for unusual in (cropping, shortest_edge):
        fallback = preprocessing_for(unusual, CPU)
        assert isinstance(fallback, ProcessorPreprocessing)
        assert fallback.size == (384, 384)  # how far a JPEG may be decoded reduced, never (0, 0)
        image = decode_image(sources()["rgb jpeg"])
        reference = unusual(images=image, return_tensors="pt")["pixel_values"]
        assert torch.equal(fallback.pixel_values([fallback.prepare(image)], CPU, torch.float32), reference)


def test_other_means_and_scales_come_from_the_processor() -> None:
    custom = BlipImageProcessorPil(image_mean=[0.5, 0.25, 0.125], image_std=[0.1, 0.2, 0.3], rescale_factor=1 / 127)
    image = decode_image(sources()["RGBA"])
    preprocessing = TablePreprocessing.of(custom, on_device=False)
    ours = preprocessing.pixel_values([preprocessing.prepare(image)], CPU, torch.float32)
    assert torch.equal(ours, custom(images=image, return_tensors="pt")["pixel_values"])


def test_a_64_megapixel_16_bit_image_allocates_no_full_resolution_floats(processor: BlipImageProcessorPil) -> None:
    """A float64 copy of it would take 512 MB; NumPy holds one 8-bit copy (64 MB) and a block of rows."""
    pixels = np.tile(np.linspace(0, 65535, 8000, dtype=np.uint16), (8000, 1))
    data = encode(Image.fromarray(pixels), "TIFF")
    del pixels
    preprocessing = TablePreprocessing.of(processor, on_device=False)
    tracemalloc.start()
    try:
        prepared = preprocessing.prepare(decode_image(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert prepared.shape == (3, 384, 384)
    assert peak < 100 * 2**20, f"NumPy peaked at {peak / 2**20:.0f} MB"


def test_the_check_above_sees_numpy_arrays() -> None:
    """tracemalloc counts NumPy's allocations, so the bound above can fail."""
    tracemalloc.start()
    try:
        np.ones((8000, 8000), dtype=np.float64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= 8000 * 8000 * 8


def test_reduced_jpeg_decoding_stays_at_least_the_model_size() -> None:
    data = encode(noise(2000, 1500, seed=2), "JPEG", quality=85)
    assert decode_image(data, reduce_to=(384, 384)).size == (1000, 750)
    assert decode_image(data).size == (2000, 1500)
    small = encode(noise(700, 500, seed=3), "JPEG", quality=85)
    assert decode_image(small, reduce_to=(384, 384)).size == (700, 500)  # not twice the size: decoded whole
    png = encode(noise(2000, 1500, seed=2), "PNG")
    assert decode_image(png, reduce_to=(384, 384)).size == (2000, 1500)  # only JPEG decodes reduced


def test_decoded_images_carry_no_transparency() -> None:
    for name, data in sources().items():
        image = decode_image(data)
        assert image.mode == "RGB", name
        assert "transparency" not in image.info, name
    assert Image.open(io.BytesIO(sources()["RGB with tRNS"])).info.get("transparency") == (255, 255, 255)
