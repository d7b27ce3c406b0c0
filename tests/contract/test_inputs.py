"""Base64 images as clients send them: plain, as data: URLs, wrapped in lines, without padding; and refused."""

from __future__ import annotations

import base64

import pytest

from blipq.contract.errors import InputTooLarge, InvalidInput
from blipq.contract.images import ImagePolicy
from blipq.contract.inputs import from_base64
from tests.helpers import drawing, encode

PNG = encode(drawing(40, 30, "white", "red"), "PNG")
TEXT = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "sent",
    [
        TEXT,
        "data:image/png;base64," + TEXT,
        "\n".join(TEXT[i : i + 76] for i in range(0, len(TEXT), 76)),  # MIME line wrapping
        " " + TEXT.replace("A", "A\r\n", 3) + "\n",
        TEXT.rstrip("="),  # padding left off
    ],
    ids=["plain", "data url", "wrapped", "spaces and CRLF", "unpadded"],
)
def test_the_forms_clients_send_decode_to_the_same_bytes(sent: str) -> None:
    assert from_base64(sent, 0, ImagePolicy()).data == PNG


def test_what_is_not_base64_is_refused_with_its_index() -> None:
    with pytest.raises(InvalidInput, match=r"image 3: not valid base64 \(9 characters\)"):
        from_base64("not*valid", 3, ImagePolicy())


def test_a_long_text_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(InputTooLarge, match=r"image 0: \d+ base64 characters encode more than the max_image_bytes"):
        from_base64("A" * 10_000, 0, ImagePolicy(max_bytes=1000))
