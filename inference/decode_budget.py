"""A bound on the memory that decoding holds at once, across the decode threads.

One image may be up to max_image_pixels (64 MP by default), and preparing one costs up to a few times its
8-bit RGB size (`python -m benchmarks.decode_memory`, on 6000 x 6000 pictures: 1.4x for JPEG, PNG and TIFF,
2.8x for RGBA PNG, 4x for WebP, whose Pillow decoder keeps buffers of its own; up to 5.3x in a process
not warmed up). Sixteen decode threads on sixteen such images would want gigabytes. So each decode first
takes its estimate from a budget, in arrival order, and waits while the budget is spent; an image larger
than the whole budget decodes alone.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from blipq.contract.errors import BlipqError
from blipq.contract.images import ImagePolicy, open_image

#: Decoding cost per pixel, in bytes (the 8-bit RGB output is 3), by format: the worst measurements, rounded up.
COST_PER_PIXEL = {"WEBP": 17, "JPEG": 8}
DEFAULT_COST_PER_PIXEL = 9


def decode_cost(data: bytes, policy: ImagePolicy) -> int:
    """The memory decoding `data` may take, from its header alone; 0 for data that is no image (refused when it
    is decoded, at no cost)."""
    try:
        image, fmt = open_image(data, policy)
    except BlipqError:
        return 0
    with image:
        width, height = image.size
    return width * height * COST_PER_PIXEL.get(fmt, DEFAULT_COST_PER_PIXEL)


class DecodeBudget:
    def __init__(self, total_bytes: int) -> None:
        self.total_bytes = total_bytes
        self._changed = threading.Condition()
        self._in_use = 0
        self._queue: deque[int] = deque()  # waiting decodes, in arrival order
        self._tickets = itertools.count()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Wait until `cost` bytes (at most the whole budget) fit, and the decodes that came first have theirs;
        hold them for the block."""
        cost = min(cost, self.total_bytes)
        ticket = next(self._tickets)
        with self._changed:
            self._queue.append(ticket)
            while self._queue[0] != ticket or self._in_use + cost > self.total_bytes:
                self._changed.wait()
            self._queue.popleft()
            self._in_use += cost
            self._changed.notify_all()  # the next in line may fit too
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= cost
                self._changed.notify_all()

    @property
    def in_use(self) -> int:
        with self._changed:
            return self._in_use

    @property
    def waiting(self) -> int:
        """Decodes waiting for their share."""
        with self._changed:
            return len(self._queue)
