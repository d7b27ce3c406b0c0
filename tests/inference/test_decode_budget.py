"""The decode memory budget: never more held than the budget, decodes served in arrival order (a large image is
not starved by small ones), an image larger than the whole budget decodes alone, and costs from headers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from blipq.contract.images import ImagePolicy
from blipq.contract.messages import ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.decode import decode_image
from blipq.inference.decode_budget import DEFAULT_COST_PER_PIXEL, DecodeBudget, decode_cost
from blipq.inference.engine import CaptionEngine
from tests.helpers import encode, noise, pictures
from tests.server import wait_until


def holder(budget: DecodeBudget, cost: int, name: str, order: list[str]) -> tuple[threading.Thread, threading.Event]:
    """A thread that holds `cost` of the budget, noting when it got it, until its event is set."""
    release = threading.Event()

    def hold() -> None:
        with budget.hold(cost):
            order.append(name)
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread, release


def started(budget: DecodeBudget, waiting: int) -> Callable[[], bool]:
    return lambda: budget.waiting == waiting


def test_decodes_wait_in_arrival_order_and_never_pass_the_budget() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    big, release_big = holder(budget, 60, "first", order)
    wait_until(lambda: order == ["first"], timeout_s=10)
    second, release_second = holder(budget, 60, "second", order)  # does not fit: waits
    wait_until(started(budget, 1), timeout_s=10)
    small, release_small = holder(budget, 10, "small", order)  # would fit, but came after "second"
    wait_until(started(budget, 2), timeout_s=10)
    assert (order, budget.in_use) == (["first"], 60)
    release_big.set()
    wait_until(lambda: len(order) == 3, timeout_s=10)
    assert (order, budget.in_use) == (["first", "second", "small"], 70)
    for release in (release_second, release_small):
        release.set()
    for thread in (big, second, small):
        thread.join(10)
    assert budget.in_use == 0


def test_an_image_larger_than_the_budget_decodes_alone() -> None:
    budget = DecodeBudget(100)
    order: list[str] = []
    huge, release_huge = holder(budget, 10_000, "huge", order)
    wait_until(lambda: order == ["huge"], timeout_s=10)
    assert budget.in_use == 100
    other, release_other = holder(budget, 1, "other", order)
    wait_until(started(budget, 1), timeout_s=10)
    release_huge.set()
    wait_until(lambda: order == ["huge", "other"], timeout_s=10)
    release_other.set()
    for thread in (huge, other):
        thread.join(10)


@pytest.mark.parametrize(("fmt", "per_pixel"), [("WEBP", 17), ("JPEG", 8), ("PNG", DEFAULT_COST_PER_PIXEL)])
def test_the_cost_comes_from_the_header_by_format(fmt: str, per_pixel: int) -> None:
    assert decode_cost(encode(noise(40, 30, seed=1), fmt), ImagePolicy()) == 40 * 30 * per_pixel
    assert decode_cost(b"not an image", ImagePolicy()) == 0


def test_a_batcher_on_a_budget_of_one_image_at_a_time_captions_everything(engine: CaptionEngine) -> None:
    done: dict[str, list[ImageResult]] = {}
    config = BatcherConfig(max_batch=4, decode_threads=4, decode_memory_bytes=1)
    batcher = Batcher(engine, config, on_start=lambda item: None, on_done=lambda item, r: done.update({item.key: r}))
    batcher.start()
    try:
        data = pictures(6)
        batcher.submit(WorkItem("job", [ImageInput(data=image) for image in data], CaptionOptions()))
        wait_until(lambda: "job" in done, timeout_s=60)
        expected = engine.caption([decode_image(image) for image in data], CaptionOptions())
        assert [result.caption for result in done["job"]] == expected
        assert batcher.decode_budget.in_use == 0
    finally:
        batcher.stop()
