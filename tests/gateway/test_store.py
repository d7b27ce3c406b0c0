"""The result store's contract, on both backends (a SQLite file; a fresh database on a real PostgreSQL): first
outcome wins, split jobs, idempotency, unfinished requests, image bytes kept only while needed, cancel, listing
with a cursor, the retention purge, and concurrent writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from blipq.contract.errors import IdempotencyConflict, JobNotFound
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, JobStatus
from blipq.gateway.pg_store import PostgresStore
from blipq.gateway.sqlite_store import SqliteStore
from blipq.gateway.store import PendingLimit, Store, StoredRequest, open_store

pytestmark = pytest.mark.anyio

TWO = [ImageInput(data=b"first image"), ImageInput(url="https://example.test/b.jpg")]
CAPTIONS = [ImageResult(caption="a cat"), ImageResult(error=ErrorInfo("fetch_failed", "image 1: HTTP 404"))]
FIVE = [ImageInput(data=bytes([index])) for index in range(5)]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = f"sqlite:///{tmp_path}/store.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    opened = open_store(url)
    await opened.start(lambda job_id: None)
    yield opened
    await opened.close()


async def unfinished(store: Store) -> list[StoredRequest]:
    """Every unfinished job's request, read one at a time as a replay reads them."""
    return [request for job in await store.unfinished_jobs() if (request := await store.request(job.job_id))]


async def unpublished(store: Store) -> list[str]:
    return [job.job_id for job in await store.unfinished_jobs() if not job.published]


def stored_blobs(store: Store) -> int:
    """Image bytes in the store's table of them, read past the store."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            return int(db.execute("SELECT COUNT(*) FROM job_blobs").fetchone()[0])
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.url) as db:
        row = db.execute("SELECT COUNT(*) FROM job_blobs").fetchone()
    assert row is not None
    return int(row[0])


async def test_the_first_outcome_wins(store: Store) -> None:
    job_id, created = await store.create(TWO, CaptionOptions())
    assert created
    assert await store.pending_images() == 2
    assert (await store.finish(job_id, CAPTIONS)).new
    late = await store.finish(job_id, [ImageResult(caption="x"), ImageResult(caption="y")])  # a duplicate reply
    assert (late.new, late.finished) == (False, True)
    assert not (await store.fail(job_id, ErrorInfo("worker_lost", "late"))).new
    job = await store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert [image.state for image in job.images] == ["done", "failed"]
    assert job.captions == ["a cat", None]
    assert job.images[1].error == CAPTIONS[1].error
    assert job.finished_at is not None
    assert await store.pending_images() == 0
    assert await unfinished(store) == []


async def test_a_late_outcome_for_a_cancelled_or_purged_job_changes_nothing(store: Store) -> None:
    job_id, _ = await store.create(TWO, CaptionOptions())
    assert (await store.cancel(job_id)).status is JobStatus.CANCELLED
    assert not (await store.finish(job_id, CAPTIONS)).new
    assert [image.state for image in (await store.get(job_id)).images] == ["cancelled", "cancelled"]
    assert not (await store.finish("0" * 32, CAPTIONS)).new
    with pytest.raises(JobNotFound):
        await store.cancel("0" * 32)
    with pytest.raises(JobNotFound):
        await store.get("0" * 32)


async def test_the_parts_of_a_split_job_finish_it_together_and_each_images_first_outcome_wins(store: Store) -> None:
    job_id, _ = await store.create(FIVE, CaptionOptions())
    first = await store.finish(job_id, [ImageResult(caption="a"), ImageResult(caption="b")], indices=[3, 4])
    assert (first.new, first.finished) == (True, False)
    assert (await store.get(job_id)).status is JobStatus.RUNNING  # a part is done, the rest is under way
    assert [request.indices for request in await unfinished(store)] == [(0, 1, 2)]
    again = await store.finish(job_id, [ImageResult(caption="x"), ImageResult(caption="y")], indices=[3, 4])
    assert (again.new, again.finished) == (False, False)  # a part's reply delivered twice
    lost = ErrorInfo("worker_lost", "stopped 4 times")
    failed = await store.fail(job_id, lost, indices=[0, 1])
    assert (failed.new, failed.finished) == (True, False)
    last = await store.finish(job_id, [ImageResult(caption="c")], indices=[2])
    assert (last.new, last.finished) == (True, True)
    job = await store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.captions == [None, None, "c", "a", "b"]
    assert [image.error for image in job.images[:2]] == [lost, lost]
    assert await store.pending_images() == 0


async def test_parts_recorded_at_once_finish_the_job_once(store: Store) -> None:
    job_id, _ = await store.create(FIVE, CaptionOptions())
    parts = [[0, 1], [2, 3], [4]]
    recorded = await asyncio.gather(
        *(store.finish(job_id, [ImageResult(caption=str(index)) for index in part], part) for part in parts),
        *(store.finish(job_id, [ImageResult(caption="late")] * len(part), part) for part in parts),
    )
    assert sum(outcome.new for outcome in recorded) == 3  # each part's first reply, whichever came first
    assert any(outcome.finished for outcome in recorded)
    job = await store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert all(caption in (str(index), "late") for index, caption in enumerate(job.captions))


async def test_a_job_whose_every_part_failed_fails(store: Store) -> None:
    job_id, _ = await store.create(FIVE[:3], CaptionOptions())
    await store.fail(job_id, ErrorInfo("expired", "too late"), indices=[0, 1])
    assert (await store.fail(job_id, ErrorInfo("expired", "too late"), indices=[2])).finished
    assert (await store.get(job_id)).status is JobStatus.FAILED


async def test_a_result_count_that_fits_no_dispatch_is_ignored(store: Store) -> None:
    job_id, _ = await store.create(TWO, CaptionOptions())
    assert not (await store.finish(job_id, CAPTIONS[:1])).new
    assert not (await store.finish(job_id, CAPTIONS, indices=[0])).new
    assert (await store.get(job_id)).status is JobStatus.QUEUED


async def test_a_job_with_no_caption_fails(store: Store) -> None:
    job_id, _ = await store.create(TWO[:1], CaptionOptions())
    assert (await store.fail(job_id, ErrorInfo("invalid_request", "not JSON"))).new
    job = await store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.images[0].error == ErrorInfo("invalid_request", "not JSON")


async def test_idempotency_keys_are_per_owner(store: Store) -> None:
    key = Idempotency("upload-1", "fingerprint-a")
    first, created = await store.create(TWO, CaptionOptions(), owner="alice", idempotency=key)
    assert created
    assert await store.create(TWO, CaptionOptions(), owner="alice", idempotency=key) == (first, False)
    other, created = await store.create(TWO, CaptionOptions(), owner="bob", idempotency=key)
    assert created
    assert other != first
    conflicting = Idempotency("upload-1", "fingerprint-b")
    with pytest.raises(IdempotencyConflict, match=first):
        await store.create(TWO, CaptionOptions(), owner="alice", idempotency=conflicting)
    assert (await store.get(first)).owner == "alice"


async def test_a_full_queue_refuses_a_job(store: Store) -> None:
    await store.create(FIVE, CaptionOptions(), max_pending=6)
    with pytest.raises(PendingLimit) as full:
        await store.create(TWO, CaptionOptions(), max_pending=6)
    assert full.value.depth == 5
    assert len(await store.list_jobs()) == 1


async def test_unfinished_jobs_keep_their_request_and_count_attempts(store: Store) -> None:
    greedy = CaptionOptions(num_beams=1)
    job_id, _ = await store.create(TWO, greedy)
    done_id, _ = await store.create(TWO, CaptionOptions())
    await store.finish(done_id, CAPTIONS)
    await store.started(job_id)
    await store.started(job_id)
    job = await store.get(job_id)
    assert (job.status, job.options) == (JobStatus.RUNNING, greedy)
    assert job.started_at is not None
    (request,) = await unfinished(store)
    assert (request.job_id, request.images, request.options, request.attempts) == (job_id, tuple(TWO), greedy, 2)
    assert request.indices == (0, 1)
    await store.requeued(job_id)
    assert (await store.get(job_id)).status is JobStatus.QUEUED
    assert (await unfinished(store))[0].attempts == 2  # requeuing does not forget the attempts


async def test_a_refused_job_is_discarded_and_its_key_freed(store: Store) -> None:
    key = Idempotency("k", "f")
    job_id, _ = await store.create(TWO, CaptionOptions(), idempotency=key)
    await store.discard(job_id)
    assert await store.list_jobs() == []
    assert (await store.create(TWO, CaptionOptions(), idempotency=key))[1]


async def test_image_bytes_are_kept_only_while_they_may_be_needed(store: Store) -> None:
    kept, _ = await store.create(TWO, CaptionOptions())
    left_to_the_broker, _ = await store.create(TWO, CaptionOptions(), keep_images=False)
    requests = {request.job_id: request for request in await unfinished(store)}
    assert requests[kept].images == tuple(TWO)
    assert requests[left_to_the_broker].images is None
    assert [job.complete for job in await store.unfinished_jobs()] == [True, False]
    await store.finish(kept, CAPTIONS)
    assert stored_blobs(store) == 0


async def test_a_job_is_unpublished_until_the_broker_confirmed_it_and_then_its_bytes_go(store: Store) -> None:
    first, _ = await store.create(TWO, CaptionOptions())
    second, _ = await store.create(TWO, CaptionOptions())
    assert await unpublished(store) == [first, second]
    request = await store.request(second)
    assert request is not None
    assert (request.images, request.published) == (tuple(TWO), False)
    await store.published(first, keep_images=False)
    await store.published(second, keep_images=True)
    assert await unpublished(store) == []
    requests = {request.job_id: request for request in await unfinished(store)}
    assert requests[first].images is None  # the broker has them
    assert requests[second].images == tuple(TWO)  # the embedded mode replays from the store


async def test_jobs_are_listed_oldest_first_by_status_and_owner_with_a_cursor(store: Store) -> None:
    ids = [(await store.create(TWO, CaptionOptions(), owner=owner))[0] for owner in ("alice", "bob", "alice")]
    await store.finish(ids[2], CAPTIONS)
    assert [job.id for job in await store.list_jobs()] == ids
    assert [job.id for job in await store.list_jobs(limit=2)] == ids[:2]
    assert [job.id for job in await store.list_jobs(after=ids[0])] == ids[1:]
    assert [job.id for job in await store.list_jobs(owner="alice")] == [ids[0], ids[2]]
    assert [job.id for job in await store.list_jobs(statuses=[JobStatus.SUCCEEDED])] == [ids[2]]
    queued = [JobStatus.QUEUED, JobStatus.RUNNING]
    assert [job.id for job in await store.list_jobs(statuses=queued, owner="alice")] == [ids[0]]
    with pytest.raises(JobNotFound, match="cursor"):
        await store.list_jobs(after=ids[1], owner="alice")  # another owner's job is no cursor
    with pytest.raises(JobNotFound, match="cursor"):
        await store.list_jobs(after="unknown")


async def test_the_purge_deletes_only_jobs_finished_before_the_retention_period(store: Store) -> None:
    old, _ = await store.create(TWO, CaptionOptions())
    await store.finish(old, CAPTIONS)
    await asyncio.sleep(0.2)
    recent, _ = await store.create(TWO, CaptionOptions())
    await store.finish(recent, CAPTIONS)
    waiting, _ = await store.create(TWO, CaptionOptions())
    assert await store.purge(older_than_s=0.1) == 1
    assert [job.id for job in await store.list_jobs()] == [recent, waiting]
    with pytest.raises(JobNotFound):
        await store.get(old)
    assert not (await store.finish(old, CAPTIONS)).new  # a late reply for a purged job changes nothing


async def test_concurrent_writes_each_get_their_own_answer(store: Store) -> None:
    """A hundred creates at once, ten conflicting and nine reusing a key: each fails or succeeds alone."""
    first, _ = await store.create(TWO, CaptionOptions(), idempotency=Idempotency("key", "fingerprint"))

    async def create(index: int) -> str:
        fingerprint = "other" if index % 10 == 0 else "fingerprint"
        key = "key" if index % 5 == 0 else f"key-{index}"
        return (await store.create(TWO, CaptionOptions(), idempotency=Idempotency(key, fingerprint)))[0]

    answers = await asyncio.gather(*(create(index) for index in range(100)), return_exceptions=True)
    conflicts = [answer for answer in answers if isinstance(answer, BaseException)]
    assert len(conflicts) == 10
    assert all(isinstance(conflict, IdempotencyConflict) for conflict in conflicts)
    ids = {answer for answer in answers if isinstance(answer, str)}
    assert len(ids) == 81  # 80 new keys, and "key" answered with the first job
    assert first in ids
    assert await store.pending_images() == 2 * 81
