"""Hostile bytes through the decode path: compression bombs, and a bounded fuzz (hypothesis).

Any input must end as an RGB image or an InvalidImage/InputTooLarge error: no other exception, no
hang, no unbounded memory. Examples per test: BLIPQ_FUZZ_EXAMPLES (default 300 in CI), e.g.

    BLIPQ_FUZZ_EXAMPLES=20000 python -m pytest tests/test_images_fuzz.py
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from blipq.contract.errors import InputTooLarge, InvalidImage
from blipq.contract.images import ImagePolicy, check_image
from blipq.inference.decode import decode_image
from tests.helpers import encode, grey16, noise

EXAMPLES = int(os.environ.get("BLIPQ_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
POLICY = ImagePolicy(max_pixels=4_000_000)


def _cmyk_jpeg() -> bytes:
    return encode(noise(40, 30, seed=8).convert("CMYK"), "JPEG")


def _animated_gif() -> bytes:
    frames = [noise(24, 24, seed=seed).convert("P") for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


SEEDS = [
    encode(noise(48, 32, seed=1), "JPEG"),
    encode(noise(48, 32, seed=2), "PNG"),
    encode(noise(48, 32, seed=3, mode="RGBA"), "PNG"),
    encode(grey16(40, 30, seed=4), "PNG"),
    encode(noise(48, 32, seed=5), "WEBP"),
    encode(noise(48, 32, seed=6), "BMP"),
    encode(noise(48, 32, seed=7), "TIFF"),
    _cmyk_jpeg(),
    _animated_gif(),
    encode(Image.new("RGB", (1, 1), "white"), "PNG"),
]


def _outcome(data: bytes) -> None:
    try:
        check_image(data, POLICY)
        image = decode_image(data, POLICY)
    except (InvalidImage, InputTooLarge) as exc:
        message = exc.message
    else:
        message = None
    if message is not None:
        assert message.strip()  # a message for a person, never empty
        return
    assert image.mode == "RGB"
    assert 0 < image.width * image.height <= POLICY.max_pixels


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes overwritten, a slice cut out or inserted, or its tail dropped."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[max(1, at) :]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_images_decode_or_fail_cleanly(data: bytes) -> None:
    _outcome(data)


MAGIC = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]


@FUZZ
@given(st.sampled_from(MAGIC), st.binary(max_size=512))
def test_random_bytes_behind_image_magic_fail_cleanly(magic: bytes, tail: bytes) -> None:
    _outcome(magic + tail)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_tiny_png_that_inflates_to_a_huge_image_is_refused_from_its_header() -> None:
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000)).save(buffer, format="PNG", optimize=True)
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000  # 49 megapixels in under 100 kB
    with pytest.raises(InputTooLarge, match="7000x7000 = 49000000 pixels, over the max_image_pixels limit"):
        decode_image(bomb, ImagePolicy(max_pixels=10_000_000))


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_compressed_metadata_bombs_are_refused(kind: bytes) -> None:
    """200 MB of zeros packed into a 200 kB text or colour-profile chunk of an otherwise valid PNG."""
    png = encode(Image.new("RGB", (16, 16), "red"), "PNG")
    bomb = _chunk(kind, b"name\x00\x00" + zlib.compress(b"\x00" * (200 * 1024 * 1024), 9))
    with pytest.raises(InvalidImage, match="Decompressed data too large"):
        decode_image(png[:33] + bomb + png[33:])


def test_every_seed_decodes() -> None:
    """The fuzz starts from real files of each format and oddity; each must decode as it is."""
    for data in SEEDS:
        assert decode_image(data, POLICY).mode == "RGB"
