"""The JobQueue contract, run against every backend (see conftest.py)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from blipq.errors import IdempotencyConflict, JobNotFound
from blipq.jobs import CaptionOptions, ErrorInfo, ImageInput, JobStatus
from blipq.queue import JobQueue, WorkerInfo, open_queue
from blipq.queue.base import Idempotency
from tests.queue.conftest import QueueFactory

DEFAULT = CaptionOptions()
GREEDY = CaptionOptions(num_beams=1)


def images(n: int, tag: str = "img") -> list[ImageInput]:
    return [ImageInput(data=f"{tag}-{i}".encode()) for i in range(n)]


def test_enqueue_then_get(queue: JobQueue) -> None:
    job_id = queue.enqueue([*images(2), ImageInput(url="http://127.0.0.1:9/a.jpg")], GREEDY)
    assert len(job_id) == 32
    assert int(job_id, 16) >= 0
    job = queue.get(job_id)
    assert job.status is JobStatus.QUEUED
    assert job.options == GREEDY
    assert [image.state for image in job.images] == ["queued"] * 3
    assert job.captions == [None, None, None]
    assert queue.depth() == 3


def test_claim_batches_across_jobs_with_the_same_options(queue: JobQueue) -> None:
    first = queue.enqueue(images(2, "a"), DEFAULT)
    other = queue.enqueue(images(1, "b"), GREEDY)
    second = queue.enqueue(images(3, "c"), DEFAULT)
    claimed = queue.claim(8, lease_s=30)
    assert [(c.job_id, c.index) for c in claimed] == [(first, 0), (first, 1), (second, 0), (second, 1), (second, 2)]
    assert {c.options for c in claimed} == {DEFAULT}
    assert claimed[2].input == ImageInput(data=b"c-0")
    assert all(c.attempt == 1 for c in claimed)
    assert queue.get(first).status is JobStatus.RUNNING
    rest = queue.claim(8, lease_s=30)
    assert [(c.job_id, c.options) for c in rest] == [(other, GREEDY)]
    assert queue.claim(8, lease_s=30) == []


def test_claim_respects_the_batch_size(queue: JobQueue) -> None:
    queue.enqueue(images(5), DEFAULT)
    assert len(queue.claim(2, lease_s=30)) == 2
    assert len(queue.claim(2, lease_s=30)) == 2
    assert len(queue.claim(2, lease_s=30)) == 1


def test_completion_finishes_the_job_and_is_idempotent(queue: JobQueue) -> None:
    job_id = queue.enqueue(images(2), DEFAULT)
    first, second = queue.claim(8, lease_s=30)
    assert queue.complete(first, "a red bus")
    assert queue.get(job_id).status is JobStatus.RUNNING
    assert queue.complete(second, "a blue car")
    assert not queue.complete(second, "something else")
    assert not queue.fail(second, ErrorInfo("invalid_image", "late"))
    job = queue.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.captions == ["a red bus", "a blue car"]
    assert job.finished_at is not None
    assert job.started_at is not None
    assert queue.depth() == 0


def test_per_image_errors(queue: JobQueue) -> None:
    mixed = queue.enqueue(images(2), DEFAULT)
    good, bad = queue.claim(8, lease_s=30)
    queue.complete(good, "a cat")
    queue.fail(bad, ErrorInfo("invalid_image", "image 1: not a supported image"))
    job = queue.get(mixed)
    assert job.status is JobStatus.SUCCEEDED
    assert job.images[1].error == ErrorInfo("invalid_image", "image 1: not a supported image")
    assert job.captions == ["a cat", None]
    hopeless = queue.enqueue(images(1), DEFAULT)
    (only,) = queue.claim(8, lease_s=30)
    queue.fail(only, ErrorInfo("fetch_failed", "404"))
    assert queue.get(hopeless).status is JobStatus.FAILED


def test_expired_lease_makes_the_image_claimable_again(queue: JobQueue) -> None:
    job_id = queue.enqueue(images(1), DEFAULT)
    (lost,) = queue.claim(8, lease_s=0.05)
    assert queue.claim(8, lease_s=30) == []  # still leased
    time.sleep(0.1)
    (again,) = queue.claim(8, lease_s=30)
    assert (again.job_id, again.index, again.attempt) == (job_id, 0, 2)
    assert again.token != lost.token
    # The first worker finishes after all: first outcome wins, the second changes nothing.
    assert queue.complete(lost, "from the slow worker")
    assert not queue.complete(again, "from the second worker")
    assert queue.get(job_id).captions == ["from the slow worker"]


def test_renewal_keeps_the_lease(queue: JobQueue) -> None:
    queue.enqueue(images(1), DEFAULT)
    claimed = queue.claim(8, lease_s=0.2)
    queue.renew(claimed, lease_s=30)
    time.sleep(0.3)
    assert queue.claim(8, lease_s=30) == []


def test_attempt_limit_fails_an_image_that_keeps_killing_workers(open_q: QueueFactory) -> None:
    queue = open_q(max_attempts=2)
    job_id = queue.enqueue(images(1), DEFAULT)
    for attempt in (1, 2):
        (claim,) = queue.claim(8, lease_s=0.01)
        assert claim.attempt == attempt
        time.sleep(0.05)
    assert queue.claim(8, lease_s=30) == []
    job = queue.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.images[0].error is not None
    assert job.images[0].error.code == "worker_lost"


def test_cancel(queue: JobQueue) -> None:
    job_id = queue.enqueue(images(3), DEFAULT)
    first, *_ = queue.claim(1, lease_s=30)
    queue.complete(first, "done before the cancel")
    held = queue.claim(1, lease_s=30)
    job = queue.cancel(job_id)
    assert job.status is JobStatus.CANCELLED
    assert [image.state for image in job.images] == ["done", "cancelled", "cancelled"]
    assert not queue.complete(held[0], "too late")
    assert queue.claim(8, lease_s=30) == []
    assert queue.depth() == 0
    finished = queue.enqueue(images(1), DEFAULT)
    queue.complete(queue.claim(1, lease_s=30)[0], "kept")
    assert queue.cancel(finished).status is JobStatus.SUCCEEDED


def test_unknown_job_ids(queue: JobQueue) -> None:
    for call in (queue.get, queue.cancel, lambda job_id: queue.wait(job_id, 0.01)):
        with pytest.raises(JobNotFound, match="no job with id 'f00'"):
            call("f00")
    with pytest.raises(JobNotFound):
        queue.list_jobs(after="f00")


def test_list_oldest_first_with_status_filter_and_cursor(queue: JobQueue) -> None:
    ids = [queue.enqueue(images(1, str(i)), DEFAULT) for i in range(5)]
    for claim in queue.claim(2, lease_s=30):
        queue.complete(claim, "ok")
    assert [job.id for job in queue.list_jobs()] == ids
    assert [job.id for job in queue.list_jobs(limit=2, after=ids[1])] == ids[2:4]
    assert [job.id for job in queue.list_jobs(statuses=[JobStatus.SUCCEEDED])] == ids[:2]
    assert [job.id for job in queue.list_jobs(statuses=[JobStatus.QUEUED, JobStatus.FAILED], after=ids[2])] == ids[3:]


def test_purge_removes_only_jobs_finished_before_the_retention(queue: JobQueue) -> None:
    done = queue.enqueue(images(1), DEFAULT)
    queue.complete(queue.claim(1, lease_s=30)[0], "old news")
    pending = queue.enqueue(images(1), DEFAULT)
    assert queue.purge(older_than_s=3600) == 0
    time.sleep(0.02)
    assert queue.purge(older_than_s=0.01) == 1
    with pytest.raises(JobNotFound):
        queue.get(done)
    assert queue.get(pending).status is JobStatus.QUEUED


def test_wait_returns_when_finished_or_at_the_timeout(queue: JobQueue) -> None:
    job_id = queue.enqueue(images(1), DEFAULT)
    started = time.monotonic()
    assert queue.wait(job_id, timeout_s=0.2).status is JobStatus.QUEUED
    assert time.monotonic() - started >= 0.2
    (claim,) = queue.claim(1, lease_s=30)
    threading.Timer(0.1, queue.complete, args=(claim, "woken")).start()
    assert queue.wait(job_id, timeout_s=10).captions == ["woken"]


def _complete_in_child(queue_url: str, delay_s: float) -> None:
    time.sleep(delay_s)
    queue = open_queue(queue_url)
    for claim in queue.claim(8, lease_s=30):
        queue.complete(claim, f"from process {multiprocessing.current_process().pid}")
    queue.close()


def test_a_waiter_is_woken_by_another_process(queue: JobQueue, queue_url: str) -> None:
    job_id = queue.enqueue(images(1), DEFAULT)
    child = multiprocessing.get_context("spawn").Process(target=_complete_in_child, args=(queue_url, 1.0))
    child.start()
    job = queue.wait(job_id, timeout_s=60)
    child.join(30)
    assert job.status is JobStatus.SUCCEEDED
    assert job.captions[0] is not None
    assert job.captions[0].startswith("from process")


def _drain(queue_url: str, results: multiprocessing.Queue[list[tuple[str, int]]]) -> None:
    queue = open_queue(queue_url)
    taken: list[tuple[str, int]] = []
    while claimed := queue.claim(7, lease_s=60):
        for claim in claimed:
            taken.append((claim.job_id, claim.index))
            queue.complete(claim, "x")
    results.put(taken)
    queue.close()


def test_two_workers_never_hold_the_same_image(queue: JobQueue, queue_url: str) -> None:
    job_ids = [queue.enqueue(images(10, str(j)), DEFAULT) for j in range(30)]
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[list[tuple[str, int]]] = context.Queue()
    workers = [context.Process(target=_drain, args=(queue_url, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    taken = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
    everything = [item for part in taken for item in part]
    assert len(everything) == len(set(everything)) == 300
    assert all(queue.get(job_id).status is JobStatus.SUCCEEDED for job_id in job_ids)


def test_accepted_jobs_survive_reopening(open_q: QueueFactory) -> None:
    first = open_q()
    job_id = first.enqueue(images(2), GREEDY)
    first.close()
    second = open_q()
    assert second.get(job_id).options == GREEDY
    assert len(second.claim(8, lease_s=30)) == 2


def test_worker_heartbeats(queue: JobQueue) -> None:
    now = time.time()
    queue.heartbeat(WorkerInfo("w1", "tiny", "cpu", now))
    queue.heartbeat(WorkerInfo("w2", "tiny", "cpu", now - 120))
    assert [worker.worker_id for worker in queue.workers(max_age_s=60)] == ["w1"]
    queue.heartbeat(WorkerInfo("w2", "tiny", "cuda:1", now))
    assert [worker.device for worker in queue.workers(max_age_s=60)] == ["cpu", "cuda:1"]


def test_claim_can_ask_for_specific_options(queue: JobQueue) -> None:
    queue.enqueue(images(1, "a"), DEFAULT)
    greedy_job = queue.enqueue(images(2, "b"), GREEDY)
    claimed = queue.claim(8, lease_s=30, options=GREEDY)
    assert [(c.job_id, c.options) for c in claimed] == [(greedy_job, GREEDY)] * 2
    assert queue.claim(8, lease_s=30, options=CaptionOptions(num_beams=5)) == []
    assert queue.claim(8, lease_s=30)[0].options == DEFAULT


def test_jobs_remember_their_owner_and_list_by_owner(queue: JobQueue) -> None:
    mine = queue.enqueue(images(1, "m"), DEFAULT, owner="key-a")
    theirs = queue.enqueue(images(1, "t"), DEFAULT, owner="key-b")
    nobody = queue.enqueue(images(1, "n"), DEFAULT)
    assert queue.get(mine).owner == "key-a"
    assert queue.get(nobody).owner is None
    assert [job.id for job in queue.list_jobs(owner="key-a")] == [mine]
    assert [job.id for job in queue.list_jobs(owner="key-b", statuses=[JobStatus.QUEUED])] == [theirs]
    assert [job.id for job in queue.list_jobs()] == [mine, theirs, nobody]


def test_an_idempotency_key_returns_the_same_job(queue: JobQueue) -> None:
    first = queue.enqueue(images(2), DEFAULT, owner="key-a", idempotency=Idempotency("order-1", "body-1"))
    again = queue.enqueue(images(2), DEFAULT, owner="key-a", idempotency=Idempotency("order-1", "body-1"))
    assert again == first
    assert queue.depth() == 2  # nothing new was queued
    with pytest.raises(IdempotencyConflict, match="'order-1' was already used for job"):
        queue.enqueue(images(3), DEFAULT, owner="key-a", idempotency=Idempotency("order-1", "body-2"))
    # Keys are per owner: another key (or none) with the same Idempotency-Key gets its own job.
    other = queue.enqueue(images(2), DEFAULT, owner="key-b", idempotency=Idempotency("order-1", "body-1"))
    anonymous = queue.enqueue(images(2), DEFAULT, idempotency=Idempotency("order-1", "body-1"))
    assert len({first, other, anonymous}) == 3
    assert queue.enqueue(images(2), DEFAULT, idempotency=Idempotency("order-1", "body-1")) == anonymous


def test_an_idempotency_key_is_forgotten_with_its_purged_job(queue: JobQueue) -> None:
    first = queue.enqueue(images(1), DEFAULT, idempotency=Idempotency("k", "body"))
    (claim,) = queue.claim(1, lease_s=30)
    queue.complete(claim, "a caption")
    time.sleep(0.05)
    assert queue.purge(older_than_s=0.01) == 1
    second = queue.enqueue(images(1), DEFAULT, idempotency=Idempotency("k", "other body"))
    assert second != first
