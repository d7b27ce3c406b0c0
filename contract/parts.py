"""Big jobs travel as several request messages, parts of bounded size (AMQP contract v1).

Brokers are built for messages of kilobytes to a few MiB: a 256-image job of 20 MiB images would be one
5 GiB message that a worker holds whole, and runs for longer than RabbitMQ's consumer_timeout allows. The
gateway therefore splits a job into parts of at most `part_bytes` (framed) and `part_images` each. Every part
carries the job's correlation_id and a `blipq-part` header naming the job's images it carries; a worker puts
that header, unchanged, on the part's reply, so the gateway records each part's results against the right
images, and the job is finished once every image has its outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from blipq.contract.errors import InputTooLarge
from blipq.contract.framing import FramedImage, framed_header_size
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions

#: The request header naming a part; echoed on the reply as it came.
PART_HEADER = "blipq-part"
#: The work of one image at the default options (beams x tokens). `part_images` is the part size at that work;
#: heavier options put fewer images in a part (at least one), so that a part's work stays bounded against the
#: broker's consumer_timeout, which RabbitMQ applies per message.
DEFAULT_IMAGE_WORK = CaptionOptions().num_beams * CaptionOptions().max_length


class PartHeader(BaseModel):
    """The value of the `blipq-part` header (an AMQP table)."""

    model_config = ConfigDict(extra="ignore")

    index: int = Field(ge=0, description="This part's number, from 0.")
    count: int = Field(ge=1, description="How many parts the job was split into.")
    images: list[int] = Field(min_length=1, description="The job's image indices this part carries, in order.")


@dataclass(frozen=True)
class Part:
    index: int
    count: int
    indices: tuple[int, ...]
    images: tuple[ImageInput, ...]

    @property
    def header(self) -> PartHeader:
        return PartHeader(index=self.index, count=self.count, images=list(self.indices))

    @property
    def message_id(self) -> str:
        """Unique per part of a job: a worker drops a second copy of a part it is running, not another part."""
        return f"{self.indices[0]}-{self.indices[-1]}"


def split(
    images: Sequence[ImageInput],
    options: CaptionOptions,
    *,
    indices: Sequence[int] | None = None,
    part_bytes: int,
    part_images: int,
    max_message_bytes: int,
) -> list[Part]:
    """The job's images, in order, as parts of at most `part_images` images (fewer for heavier options:
    `images_per_part`) and `part_bytes` framed bytes each (and never over `max_message_bytes`); an image larger
    than that alone goes in a part of its own. `indices`: the job's index of each image (default
    0, 1, ...). InputTooLarge when one image alone would make a message over `max_message_bytes`."""
    indices = list(range(len(images))) if indices is None else list(indices)
    fixed = framed_header_size([], options) + 1  # the header's own bytes and its newline
    part_bytes = min(part_bytes, max_message_bytes)
    part_images = images_per_part(options, part_images)
    groups: list[list[int]] = []
    size = 0
    for position, image in enumerate(images):
        cost = _framed_cost(image)
        if fixed + cost > max_message_bytes:
            raise InputTooLarge(
                f"image {indices[position]} makes a {fixed + cost}-byte message and RabbitMQ takes at most "
                f"{max_message_bytes} (BLIPQ_MAX_MESSAGE_BYTES): send it as a URL, or raise the limit"
            )
        if not groups or len(groups[-1]) == part_images or fixed + size + cost > part_bytes:
            groups.append([])
            size = 0
        groups[-1].append(position)
        size += cost
    return [
        Part(
            number,
            len(groups),
            tuple(indices[position] for position in group),
            tuple(images[position] for position in group),
        )
        for number, group in enumerate(groups)
    ]


def images_per_part(options: CaptionOptions, part_images: int) -> int:
    """`part_images` at the default options' work per image, fewer for heavier options (at least one)."""
    work = options.num_beams * options.max_length
    return max(1, min(part_images, part_images * DEFAULT_IMAGE_WORK // work))


def read_part_header(headers: Mapping[str, object] | None) -> PartHeader | None:
    """The part a reply answers, from its headers; None for a reply without one (a job sent whole). Raises
    pydantic's ValidationError for a header that is not a part's."""
    value = (headers or {}).get(PART_HEADER)
    return None if value is None else PartHeader.model_validate(value)


def _framed_cost(image: ImageInput) -> int:
    """What one image adds to a framed message: its description in the header (and a comma), and its bytes."""
    described = FramedImage(url=image.url) if image.data is None else FramedImage(bytes=len(image.data))
    return len(described.model_dump_json(exclude_none=True)) + 1 + (len(image.data) if image.data else 0)
