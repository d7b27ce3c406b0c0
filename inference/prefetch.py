"""How many request messages a worker should hold: RabbitMQ's prefetch counts messages, the model counts images.

A worker wants about two batches of images in hand: one on the model, the next ready. With one-image
messages that takes 2 x max_batch messages; with a gateway's 16-image parts, two. Holding 2 x max_batch big
messages instead would keep one worker's hands full of a job's parts while another worker idles, and make
the last of them wait behind hundreds of images, against the broker's consumer_timeout. So the worker sizes
its prefetch by the largest of the last messages it received, and never above `cap` (its byte bound).
"""

from __future__ import annotations

import math
from collections import deque

#: The messages whose sizes set the prefetch: a few large ones among single images keep it low for a while.
WINDOW = 16


class PrefetchTuner:
    def __init__(self, images_wanted: int, cap: int) -> None:
        self.images_wanted = images_wanted
        self.cap = cap
        self._recent: deque[int] = deque(maxlen=WINDOW)

    def observe(self, images: int) -> None:
        """A request message carrying `images` images arrived."""
        self._recent.append(max(1, images))

    @property
    def wanted(self) -> int:
        """Messages to hold: enough for `images_wanted` images at the largest recent message size."""
        largest = max(self._recent, default=1)
        return max(1, min(self.cap, math.ceil(self.images_wanted / largest)))
