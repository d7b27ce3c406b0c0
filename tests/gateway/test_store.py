"""The SQLite result store: first outcome wins, idempotency, unfinished requests, and older stores."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from blipq.contract.errors import IdempotencyConflict, StoreUnavailable
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, JobStatus
from blipq.gateway.store import JobStore, StoredRequest, open_store

TWO = [ImageInput(data=b"first image"), ImageInput(url="https://example.test/b.jpg")]
CAPTIONS = [ImageResult(caption="a cat"), ImageResult(error=ErrorInfo("fetch_failed", "image 1: HTTP 404"))]


def unfinished(store: JobStore) -> list[StoredRequest]:
    """Every unfinished job's request, read one at a time as a replay reads them."""
    return [request for job in store.unfinished_jobs() if (request := store.request(job.job_id)) is not None]


def unpublished(store: JobStore) -> list[str]:
    return [job.job_id for job in store.unfinished_jobs() if not job.published]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return open_store(f"sqlite:///{tmp_path}/store.db")


def test_the_first_outcome_wins(store: JobStore) -> None:
    job_id, created = store.create(TWO, CaptionOptions()).result()
    assert created
    assert store.pending_images() == 2
    assert store.finish(job_id, CAPTIONS).result().new
    late = store.finish(job_id, [ImageResult(caption="x"), ImageResult(caption="y")]).result()  # a duplicate reply
    assert (late.new, late.finished) == (False, True)
    assert not store.fail(job_id, ErrorInfo("worker_lost", "late")).result().new
    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert [image.state for image in job.images] == ["done", "failed"]
    assert job.captions == ["a cat", None]
    assert store.pending_images() == 0
    assert unfinished(store) == []


def test_a_late_outcome_for_a_cancelled_or_purged_job_changes_nothing(store: JobStore) -> None:
    job_id, _ = store.create(TWO, CaptionOptions()).result()
    assert store.cancel(job_id).status is JobStatus.CANCELLED
    assert not store.finish(job_id, CAPTIONS).result().new
    assert [image.state for image in store.get(job_id).images] == ["cancelled", "cancelled"]
    assert not store.finish("0" * 32, CAPTIONS).result().new


FIVE = [ImageInput(data=bytes([index])) for index in range(5)]


def test_the_parts_of_a_split_job_finish_it_together_and_each_images_first_outcome_wins(store: JobStore) -> None:
    job_id, _ = store.create(FIVE, CaptionOptions()).result()
    first = store.finish(job_id, [ImageResult(caption="a"), ImageResult(caption="b")], indices=[3, 4]).result()
    assert (first.new, first.finished) == (True, False)
    assert store.get(job_id).status is JobStatus.RUNNING  # a part is done, the rest is under way
    assert [request.indices for request in unfinished(store)] == [(0, 1, 2)]
    again = store.finish(job_id, [ImageResult(caption="x"), ImageResult(caption="y")], indices=[3, 4]).result()
    assert (again.new, again.finished) == (False, False)  # a part's reply delivered twice
    lost = ErrorInfo("worker_lost", "stopped 4 times")
    failed = store.fail(job_id, lost, indices=[0, 1]).result()
    assert (failed.new, failed.finished) == (True, False)
    last = store.finish(job_id, [ImageResult(caption="c")], indices=[2]).result()
    assert (last.new, last.finished) == (True, True)
    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.captions == [None, None, "c", "a", "b"]
    assert [image.error for image in job.images[:2]] == [lost, lost]
    assert store.pending_images() == 0


def test_a_job_whose_every_part_failed_fails(store: JobStore) -> None:
    job_id, _ = store.create(FIVE[:3], CaptionOptions()).result()
    store.fail(job_id, ErrorInfo("expired", "too late"), indices=[0, 1]).result()
    assert store.fail(job_id, ErrorInfo("expired", "too late"), indices=[2]).result().finished
    assert store.get(job_id).status is JobStatus.FAILED


def test_a_result_count_that_fits_no_dispatch_is_ignored(store: JobStore) -> None:
    job_id, _ = store.create(TWO, CaptionOptions()).result()
    assert not store.finish(job_id, CAPTIONS[:1]).result().new
    assert not store.finish(job_id, CAPTIONS, indices=[0]).result().new
    assert store.get(job_id).status is JobStatus.QUEUED


def test_a_job_with_no_caption_fails(store: JobStore) -> None:
    job_id, _ = store.create(TWO[:1], CaptionOptions()).result()
    assert store.fail(job_id, ErrorInfo("invalid_request", "not JSON")).result().new
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.images[0].error == ErrorInfo("invalid_request", "not JSON")


def test_idempotency_keys_are_per_owner(store: JobStore) -> None:
    key = Idempotency("upload-1", "fingerprint-a")
    first, created = store.create(TWO, CaptionOptions(), owner="alice", idempotency=key).result()
    assert created
    assert store.create(TWO, CaptionOptions(), owner="alice", idempotency=key).result() == (first, False)
    other, created = store.create(TWO, CaptionOptions(), owner="bob", idempotency=key).result()
    assert created
    assert other != first
    conflicting = Idempotency("upload-1", "fingerprint-b")
    with pytest.raises(IdempotencyConflict, match=first):
        store.create(TWO, CaptionOptions(), owner="alice", idempotency=conflicting).result()


def test_unfinished_jobs_keep_their_request_and_count_attempts(store: JobStore) -> None:
    greedy = CaptionOptions(num_beams=1)
    job_id, _ = store.create(TWO, greedy).result()
    done_id, _ = store.create(TWO, CaptionOptions()).result()
    store.finish(done_id, CAPTIONS).result()
    store.started(job_id).result()
    store.started(job_id).result()
    assert store.get(job_id).status is JobStatus.RUNNING
    (request,) = unfinished(store)
    assert (request.job_id, request.images, request.options, request.attempts) == (job_id, tuple(TWO), greedy, 2)
    assert request.indices == (0, 1)
    store.requeued(job_id)
    assert store.get(job_id).status is JobStatus.QUEUED
    assert unfinished(store)[0].attempts == 2  # requeuing does not forget the attempts


def test_a_refused_job_is_discarded_and_its_key_freed(store: JobStore) -> None:
    key = Idempotency("k", "f")
    job_id, _ = store.create(TWO, CaptionOptions(), idempotency=key).result()
    store.discard(job_id).result()
    assert store.list_jobs() == []
    assert store.create(TWO, CaptionOptions(), idempotency=key).result()[1]


def test_a_store_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    first = open_store(url)
    job_id, _ = first.create(TWO, CaptionOptions()).result()
    first.close()
    again = open_store(url)
    assert [request.job_id for request in unfinished(again)] == [job_id]


#: The tables the claim/lease queue of earlier versions wrote to the same default file.
EARLIER_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    options TEXT NOT NULL, n_images INTEGER NOT NULL, n_finished INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, owner TEXT, idem_key TEXT, idem_fingerprint TEXT);
CREATE TABLE images (job_seq INTEGER NOT NULL, job_id TEXT NOT NULL, idx INTEGER NOT NULL, options TEXT NOT NULL,
    data BLOB, url TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_until REAL, lease_token TEXT,
    caption TEXT, error_code TEXT, error_message TEXT, PRIMARY KEY (job_id, idx));
CREATE TABLE workers (worker_id TEXT PRIMARY KEY, model TEXT NOT NULL, device TEXT NOT NULL, seen_at REAL NOT NULL);
INSERT INTO jobs (id, status, options, n_images, created_at) VALUES ('a' , 'running', '{"num_beams":1}', 2, 1.0);
INSERT INTO jobs (id, status, options, n_images, created_at, finished_at) VALUES ('b', 'succeeded', '{}', 1, 1.0, 2.0);
INSERT INTO images (job_seq, job_id, idx, options, data, state) VALUES (1, 'a', 0, '{}', NULL, 'done');
UPDATE images SET caption = 'kept' WHERE job_id = 'a';
INSERT INTO images (job_seq, job_id, idx, options, data, state) VALUES (1, 'a', 1, '{}', x'0102', 'running');
INSERT INTO images (job_seq, job_id, idx, options, url, state, caption)
    VALUES (2, 'b', 0, '{}', 'https://x.test/', 'done', 'old');
"""


def test_a_store_of_the_earlier_queue_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(EARLIER_SCHEMA)
    store = open_store(f"sqlite:///{path}")
    (request,) = unfinished(store)
    assert request.job_id == "a"
    assert request.images == (ImageInput(data=b"\x01\x02"),)  # the image without an outcome yet
    assert store.get("a").status is JobStatus.QUEUED
    assert store.finish("a", [ImageResult(caption="new")]).result().new
    assert store.get("a").captions == ["kept", "new"]
    assert store.get("b").captions == ["old"]
    store.close()
    assert open_store(f"sqlite:///{path}").get("b").status is JobStatus.SUCCEEDED  # opening twice is fine


#: The layout before the store was versioned: the image bytes in job_images.
VERSION_1_SCHEMA = """
CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
    options TEXT NOT NULL, n_images INTEGER NOT NULL, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    owner TEXT, idem_key TEXT, idem_fingerprint TEXT, attempts INTEGER NOT NULL DEFAULT 0);
CREATE TABLE job_images (job_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB, url TEXT, state TEXT NOT NULL,
    caption TEXT, error_code TEXT, error_message TEXT, PRIMARY KEY (job_id, idx));
INSERT INTO jobs (id, status, options, n_images, created_at, attempts) VALUES ('a', 'running', '{}', 2, 1.0, 1);
INSERT INTO job_images (job_id, idx, data, state) VALUES ('a', 0, x'0304', 'running');
INSERT INTO job_images (job_id, idx, url, state) VALUES ('a', 1, 'https://x.test/c.png', 'running');
"""


def test_a_store_of_the_unversioned_layout_moves_its_image_bytes_aside(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1_SCHEMA)
    store = open_store(f"sqlite:///{path}")
    (request,) = unfinished(store)
    assert request.images == (ImageInput(data=b"\x03\x04"), ImageInput(url="https://x.test/c.png"))
    assert request.attempts == 1
    store.close()
    with sqlite3.connect(path) as db:
        assert "data" not in {row[1] for row in db.execute("PRAGMA table_info(job_images)")}
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
    assert unpublished(open_store(f"sqlite:///{path}")) == []  # jobs of earlier versions count as published


def test_a_store_of_version_2_learns_which_jobs_were_published(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1_SCHEMA)
    open_store(f"sqlite:///{path}").close()  # now version 3; back to what version 2 looked like:
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN published")
        db.execute("PRAGMA user_version = 2")
    store = open_store(f"sqlite:///{path}")
    assert [request.job_id for request in unfinished(store)] == ["a"]
    assert unpublished(store) == []
    store.close()


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="version 99, written by a newer blipq"):
        open_store(f"sqlite:///{path}")


def test_image_bytes_are_kept_only_while_they_may_be_needed(store: JobStore, tmp_path: Path) -> None:
    kept, _ = store.create(TWO, CaptionOptions()).result()
    left_to_the_broker, _ = store.create(TWO, CaptionOptions(), keep_images=False).result()
    requests = {request.job_id: request for request in unfinished(store)}
    assert requests[kept].images == tuple(TWO)
    assert requests[left_to_the_broker].images is None
    assert [job.complete for job in store.unfinished_jobs()] == [True, False]
    store.finish(kept, CAPTIONS).result()
    with sqlite3.connect(tmp_path / "store.db") as db:
        assert db.execute("SELECT COUNT(*) FROM job_blobs").fetchone() == (0,)


def test_a_job_is_unpublished_until_the_broker_confirmed_it_and_then_its_bytes_go(
    store: JobStore, tmp_path: Path
) -> None:
    first, _ = store.create(TWO, CaptionOptions()).result()
    second, _ = store.create(TWO, CaptionOptions()).result()
    assert unpublished(store) == [first, second]
    request = store.request(second)
    assert request is not None
    assert (request.images, request.published) == (tuple(TWO), False)
    store.published(first, keep_images=False).result()
    store.published(second, keep_images=True).result()
    assert unpublished(store) == []
    requests = {request.job_id: request for request in unfinished(store)}
    assert requests[first].images is None  # the broker has them
    assert requests[second].images == tuple(TWO)  # the embedded mode replays from the store


def test_writes_from_many_threads_are_committed_together_and_fail_alone(store: JobStore) -> None:
    """Each create waits for its commit; a conflicting one fails without taking its group with it."""
    first, _ = store.create(TWO, CaptionOptions(), idempotency=Idempotency("key", "fingerprint")).result()

    def create(index: int) -> str:
        fingerprint = "other" if index % 10 == 0 else "fingerprint"
        key = "key" if index % 5 == 0 else f"key-{index}"
        return store.create(TWO, CaptionOptions(), idempotency=Idempotency(key, fingerprint)).result()[0]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(create, index) for index in range(100)]
    conflicts = [future for future in futures if future.exception() is not None]
    assert len(conflicts) == 10
    assert all(isinstance(future.exception(), IdempotencyConflict) for future in conflicts)
    ids = {future.result() for future in futures if future.exception() is None}
    assert len(ids) == 81  # 80 new keys, and "key" answered with the first job
    assert first in ids
    assert store.pending_images() == 2 * 81
