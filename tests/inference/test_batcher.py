"""The batcher with the real (tiny) BLIP engine: batching across jobs, failures, splitting, stopping."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from blipq.contract.messages import ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.inference.batcher import Batcher, BatcherConfig, WorkItem
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from blipq.inference.fetch import FetchPolicy
from tests.helpers import encode, noise, pictures


class Outcomes:
    """What a transport would see: started keys in order, and each job's results once."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.done: dict[str, list[ImageResult]] = {}
        self._changed = threading.Condition()

    def on_start(self, item: WorkItem) -> None:
        self.started.append(item.key)

    def on_done(self, item: WorkItem, results: list[ImageResult]) -> None:
        with self._changed:
            assert item.key not in self.done, f"{item.key} finished twice"
            self.done[item.key] = results
            self._changed.notify_all()

    def wait(self, keys: Sequence[str], timeout_s: float = 60) -> list[list[ImageResult]]:
        with self._changed:
            assert self._changed.wait_for(lambda: all(key in self.done for key in keys), timeout_s), "timed out"
            return [self.done[key] for key in keys]


BatcherFactory = Callable[[BatcherConfig], Batcher]


def _never(call: int, size: int) -> bool:
    return False


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
def make_batcher(engine: CaptionEngine, outcomes: Outcomes) -> Iterator[BatcherFactory]:
    running: list[Batcher] = []

    def build(config: BatcherConfig) -> Batcher:
        batcher = Batcher(engine, config, on_start=outcomes.on_start, on_done=outcomes.on_done)
        batcher.start()
        running.append(batcher)
        return batcher

    yield build
    for batcher in running:
        if batcher.alive():
            batcher.stop()


def job(key: str, images: Sequence[bytes | str], options: CaptionOptions | None = None) -> WorkItem:
    inputs = [ImageInput(url=image) if isinstance(image, str) else ImageInput(data=image) for image in images]
    return WorkItem(key, inputs, options or CaptionOptions())


def record_calls(
    monkeypatch: pytest.MonkeyPatch, engine: CaptionEngine, method: str, fails: Callable[[int, int], bool] = _never
) -> list[int]:
    """Wrap one of the engine's methods that takes a sequence first: the sizes of its calls, in order. A call
    for which `fails(call number, size)` is true raises CUDA's out-of-memory error instead (simulated)."""
    real = getattr(engine, method)
    sizes: list[int] = []

    def recorded(items: Sequence[object], *args: Any) -> Any:
        sizes.append(len(items))
        if fails(len(sizes), len(items)):
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated: call {len(sizes)} of {method})")
        return real(items, *args)

    monkeypatch.setattr(engine, method, recorded)
    return sizes


def captions(results: list[ImageResult]) -> list[str | None]:
    return [result.caption for result in results]


def test_single_image_jobs_are_batched_together(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine
) -> None:
    data = pictures(8)
    calls_before = engine.generate_calls
    batcher = make_batcher(BatcherConfig(max_batch=8, batch_wait_ms=200))
    for index, item in enumerate(data):
        batcher.submit(job(f"job-{index}", [item]))
    results = outcomes.wait([f"job-{index}" for index in range(8)])
    expected = engine.caption([decode_image(item) for item in data], CaptionOptions())
    assert [captions(result)[0] for result in results] == expected
    assert engine.generate_calls - calls_before < 8
    assert outcomes.started == [f"job-{index}" for index in range(8)]
    assert batcher.metrics.batch_size._sum.get() == 8


def test_a_job_larger_than_a_batch_spans_batches_and_keeps_its_order(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine
) -> None:
    data = pictures(7)
    batcher = make_batcher(BatcherConfig(max_batch=3, batch_wait_ms=0))
    batcher.submit(job("big", data))
    (results,) = outcomes.wait(["big"])
    assert captions(results) == engine.caption([decode_image(item) for item in data], CaptionOptions())


def test_jobs_with_other_options_are_never_mixed_into_one_batch(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine
) -> None:
    data = pictures(4)
    greedy = CaptionOptions(num_beams=1)
    batcher = make_batcher(BatcherConfig(max_batch=8, batch_wait_ms=100))
    batcher.submit(job("beam", data[:2]))
    batcher.submit(job("greedy", data[2:], greedy))
    beam, fast = outcomes.wait(["beam", "greedy"])
    assert captions(beam) == engine.caption([decode_image(item) for item in data[:2]], CaptionOptions())
    assert captions(fast) == engine.caption([decode_image(item) for item in data[2:]], greedy)


def test_a_bad_image_fails_alone(
    make_batcher: BatcherFactory, outcomes: Outcomes, http_server: tuple[str, Path]
) -> None:
    base, root = http_server
    (root / "ok.jpg").write_bytes(encode(noise(64, 64, seed=9), "JPEG"))
    images = [pictures(1)[0], b"<svg xmlns='http://www.w3.org/2000/svg'/>", f"{base}/ok.jpg", f"{base}/missing.jpg"]
    batcher = make_batcher(BatcherConfig(fetch=FetchPolicy(allow_networks=("127.0.0.0/8",))))
    batcher.submit(job("mixed", images, CaptionOptions(num_beams=1)))
    (results,) = outcomes.wait(["mixed"])
    assert [result.error is None for result in results] == [True, False, True, False]
    assert results[1].error is not None
    assert results[1].error.code == "invalid_image"
    assert results[1].error.message.startswith("image 1: not a supported image (got an SVG document")
    assert results[3].error is not None
    assert results[3].error.code == "fetch_failed"
    assert "HTTP 404" in results[3].error.message
    failed = batcher.metrics.failed
    assert failed.labels(code="invalid_image")._value.get() == 1


def test_out_of_memory_splits_the_batch(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a small GPU: more than 2 images are out of memory
    sizes = record_calls(monkeypatch, engine, "start_search", fails=lambda _, size: size > 2)
    data = pictures(6)
    # a long batch wait and room for six: the model takes all six together as soon as they are decoded
    batcher = make_batcher(BatcherConfig(max_batch=6, batch_wait_ms=5000))
    batcher.submit(job("six", data))
    (results,) = outcomes.wait(["six"])
    monkeypatch.undo()
    assert captions(results) == engine.caption([decode_image(item) for item in data], CaptionOptions())
    assert sizes == [6, 3, 1, 2, 3, 1, 2]  # halves, then halves of the halves, until they fit


def test_a_step_that_fails_hands_the_images_in_flight_to_batches(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_calls(monkeypatch, engine, "step_searches", fails=lambda call, _: call == 3)  # the third step
    batches = record_calls(monkeypatch, engine, "generate")
    data = pictures(4)
    batcher = make_batcher(BatcherConfig(max_batch=4, batch_wait_ms=5000))  # the four together, at once
    batcher.submit(job("four", data))
    (results,) = outcomes.wait(["four"])
    monkeypatch.undo()
    assert batches == [4]  # after the failure the four images were captioned again, in one batch
    assert captions(results) == engine.caption([decode_image(item) for item in data], CaptionOptions())


def test_an_image_that_arrives_while_a_long_search_runs_joins_it_and_is_answered_first(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine
) -> None:
    data = pictures(5)
    long = CaptionOptions(max_length=200, min_length=200)
    short = CaptionOptions(num_beams=1, max_length=8, min_length=8)
    batcher = make_batcher(BatcherConfig(max_batch=8, batch_wait_ms=0))
    batcher.submit(job("long", data[:4], long))
    while not outcomes.started:
        threading.Event().wait(0.005)
    batcher.submit(job("short", data[4:], short))
    long_results, short_results = outcomes.wait(["long", "short"])
    assert list(outcomes.done) == ["short", "long"]  # the short job did not wait for the long one's batch
    assert captions(short_results) == engine.caption([decode_image(data[4])], short)
    assert captions(long_results) == engine.caption([decode_image(item) for item in data[:4]], long)


def test_stop_finishes_the_jobs_started_and_hands_back_the_others(
    make_batcher: BatcherFactory, outcomes: Outcomes, engine: CaptionEngine
) -> None:
    data = pictures(6)
    batcher = make_batcher(BatcherConfig(max_batch=2, batch_wait_ms=0))
    for index in range(4):
        batcher.submit(job(f"job-{index}", data[index : index + 3]))
    while not outcomes.started:
        threading.Event().wait(0.005)
    handed_back = batcher.stop()
    assert not batcher.alive()
    finished = set(outcomes.done)
    assert set(outcomes.started) == finished  # every job started was finished, none half-done
    assert {item.key for item in handed_back} | finished == {f"job-{index}" for index in range(4)}
    assert not {item.key for item in handed_back} & finished
    assert handed_back, "stopped right after the first batch started, so some jobs never started"
    with pytest.raises(Exception, match="not running"):
        batcher.submit(job("late", data[:1]))


def test_urls_into_the_network_fail_alone_with_a_clear_error(
    make_batcher: BatcherFactory, outcomes: Outcomes, http_server: tuple[str, Path]
) -> None:
    """With the default fetch policy (public addresses only) internal URLs are per-image errors."""
    base, root = http_server
    (root / "inside.jpg").write_bytes(encode(noise(64, 64, seed=3), "JPEG"))
    urls = [f"{base}/inside.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/a.jpg"]
    batcher = make_batcher(BatcherConfig())
    batcher.submit(job("inside", [pictures(1)[0], *urls]))
    (results,) = outcomes.wait(["inside"])
    assert [result.error is None for result in results] == [True, False, False, False]
    for result in results[1:]:
        assert result.error is not None
        assert result.error.code == "fetch_failed"
        assert "is not a public address" in result.error.message


def test_a_slow_host_holds_at_most_half_the_decode_threads_and_its_urls_fail_at_the_deadline(
    make_batcher: BatcherFactory, outcomes: Outcomes, crawling_server: str
) -> None:
    batcher = make_batcher(
        BatcherConfig(decode_threads=4, fetch=FetchPolicy(timeout_s=3, allow_networks=("127.0.0.1/32",)))
    )
    slow = [f"slow {number}" for number in range(4)]
    for number, key in enumerate(slow):
        batcher.submit(job(key, [f"{crawling_server}/{number}.jpg"]))
    batcher.submit(job("good", pictures(2)))
    (good,) = outcomes.wait(["good"])
    assert all(result.caption for result in good)
    assert not set(slow) & set(outcomes.done), "the good job waited for the slow host"
    for results in outcomes.wait(slow, timeout_s=30):
        [result] = results
        assert result.error is not None
        assert result.error.code == "fetch_failed"
        assert "could not be fetched within 3 s" in result.error.message
