"""Splitting a job into parts: every part within its bounds, the images in order under their job indices, one
image that cannot fit refused, and the part a reply answers read back from its headers."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blipq.contract import replies
from blipq.contract.errors import InputTooLarge
from blipq.contract.framing import frame_request
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.contract.parts import PART_HEADER, images_per_part, split

OPTIONS = CaptionOptions()


def sized(*lengths: int) -> list[ImageInput]:
    return [ImageInput(data=bytes([index]) * length) for index, length in enumerate(lengths)]


def test_parts_stay_within_their_bytes_and_images_and_keep_every_image_in_order() -> None:
    images = [*sized(300, 300, 300, 900, 10, 10, 10, 10, 10), ImageInput(url="https://example.test/a.jpg")]
    parts = split(images, OPTIONS, part_bytes=1000, part_images=3, max_message_bytes=10_000)
    assert [part.indices for part in parts] == [(0, 1), (2,), (3,), (4, 5, 6), (7, 8, 9)]
    assert [image for part in parts for image in part.images] == images
    for number, part in enumerate(parts):
        if len(part.images) > 1:  # the bound holds for the real framed message; image 3 alone passes it
            assert len(frame_request(part.images, OPTIONS)) <= 1000
        assert (part.index, part.count) == (number, 5)


def test_an_image_larger_than_a_part_goes_alone_and_one_over_the_message_limit_is_refused() -> None:
    parts = split(sized(10, 5000, 10), OPTIONS, part_bytes=1000, part_images=16, max_message_bytes=6000)
    assert [part.indices for part in parts] == [(0,), (1,), (2,)]
    parts = split(sized(450, 450, 450), OPTIONS, part_bytes=10**6, part_images=16, max_message_bytes=1000)
    assert [part.indices for part in parts] == [(0,), (1,), (2,)]  # parts never pass the message limit
    with pytest.raises(InputTooLarge, match=r"image 1 makes a .*BLIPQ_MAX_MESSAGE_BYTES"):
        split(sized(10, 5000), OPTIONS, part_bytes=1000, part_images=16, max_message_bytes=5000)


def test_the_job_indices_of_a_partly_answered_job_go_with_its_images() -> None:
    parts = split(sized(1, 1, 1), OPTIONS, indices=[2, 5, 7], part_bytes=10_000, part_images=2, max_message_bytes=10**6)
    assert [part.indices for part in parts] == [(2, 5), (7,)]
    assert [part.message_id for part in parts] == ["2-5", "7-7"]


def test_a_reply_carrying_a_part_header_answers_those_images() -> None:
    (part,) = split(sized(1, 1), OPTIONS, indices=[3, 4], part_bytes=10_000, part_images=2, max_message_bytes=10**6)
    header = {PART_HEADER: part.header.model_dump()}
    results = [ImageResult(caption="a"), ImageResult(caption="b")]
    assert replies.decode(replies.encode_results("job", results, "tiny"), header).indices == (3, 4)
    error = replies.decode(replies.encode_error("job", ErrorInfo("expired", "late")), header)
    assert (error.indices, error.error) == ((3, 4), ErrorInfo("expired", "late"))
    assert replies.decode(replies.encode_results("job", results, "tiny"), {}).indices is None
    with pytest.raises(ValidationError):
        replies.decode(replies.encode_results("job", results, "tiny"), {PART_HEADER: {"index": 0}})


def test_heavier_options_put_fewer_images_in_a_part() -> None:
    assert images_per_part(CaptionOptions(), 16) == 16
    assert images_per_part(CaptionOptions(num_beams=1, max_length=10), 16) == 16  # never more than asked
    assert images_per_part(CaptionOptions(num_beams=6, max_length=40), 16) == 4
    assert images_per_part(CaptionOptions(num_beams=16, max_length=512), 16) == 1
    heavy = CaptionOptions(num_beams=6, max_length=40)
    parts = split(sized(*[1] * 10), heavy, part_bytes=10**6, part_images=16, max_message_bytes=10**6)
    assert [len(part.images) for part in parts] == [4, 4, 2]
