"""Framed request messages: the image bytes after a JSON header line, read back exactly, and refused when
the header and the body disagree."""

from __future__ import annotations

import pytest

from blipq.contract.errors import InvalidRequest
from blipq.contract.framing import frame_request, read_framed_request
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions


def test_bytes_and_urls_come_back_in_order_with_the_options() -> None:
    images = [ImageInput(data=b"\x89PNG first\n\n"), ImageInput(url="https://example.test/a.jpg"), ImageInput(data=b"")]
    options = CaptionOptions(num_beams=1, prompt="")
    body = frame_request(images, options)
    assert body.startswith(b'{"images":[{"bytes":12},{"url":"https://example.test/a.jpg"},{"bytes":0}]')
    assert read_framed_request(body) == ([b"\x89PNG first\n\n", "https://example.test/a.jpg", b""], options)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"images": [{"bytes": 3}]}', "no newline after the JSON header"),
        (b'{"images": [{"bytes": 3}]}\nab', "declares 3 bytes of images, the body carries 2"),
        (b'{"images": [{"bytes": 3}]}\nabcd', "declares 3 bytes of images, the body carries 4"),
        (b'{"images": [{"bytes": -1}]}\n', "images.0.bytes: Input should be greater than or equal to 0"),
        (b'{"images": [{"bytes": 1, "url": "https://x.test/"}]}\na', "exactly one of bytes or url"),
        (b'{"images": [{"b64": "aGk="}]}\n', "images.0.b64: Extra inputs are not permitted"),
        (b"not json\n", "not a framed request header"),
    ],
)
def test_a_header_that_does_not_fit_its_body_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        read_framed_request(body)
