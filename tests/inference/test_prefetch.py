"""How many messages a worker holds: two batches of images at the largest recent message size, within its cap."""

from __future__ import annotations

from blipq.inference.prefetch import WINDOW, PrefetchTuner


def test_the_largest_recent_message_sets_the_prefetch_and_the_cap_bounds_it() -> None:
    tuner = PrefetchTuner(images_wanted=32, cap=20)
    assert tuner.wanted == 20  # one-image messages would want 32: the byte cap says 20
    tuner.observe(16)
    assert tuner.wanted == 2  # two 16-image parts
    tuner.observe(5)
    assert tuner.wanted == 2  # the largest of the window counts
    for _ in range(WINDOW - 1):
        tuner.observe(5)
    assert tuner.wanted == 7  # the 16-image part left the window: ceil(32 / 5)
    tuner.observe(256)
    assert tuner.wanted == 1  # never less than one
    tuner.observe(0)  # a message of no images (refused whole) counts as one
    assert tuner.wanted == 1
