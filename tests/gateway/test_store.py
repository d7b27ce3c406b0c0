"""The SQLite result store: first outcome wins, idempotency, unfinished requests, and older stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blipq.contract.errors import IdempotencyConflict
from blipq.contract.messages import ErrorInfo, ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency, JobStatus
from blipq.gateway.store import JobStore, open_store

TWO = [ImageInput(data=b"first image"), ImageInput(url="https://example.test/b.jpg")]
CAPTIONS = [ImageResult(caption="a cat"), ImageResult(error=ErrorInfo("fetch_failed", "image 1: HTTP 404"))]


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return open_store(f"sqlite:///{tmp_path}/store.db")


def test_the_first_outcome_wins(store: JobStore) -> None:
    job_id, created = store.create(TWO, CaptionOptions())
    assert created
    assert store.pending_images() == 2
    assert store.finish(job_id, CAPTIONS)
    assert not store.finish(job_id, [ImageResult(caption="x"), ImageResult(caption="y")])  # a duplicate reply
    assert not store.fail(job_id, ErrorInfo("worker_lost", "late"))
    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert [image.state for image in job.images] == ["done", "failed"]
    assert job.captions == ["a cat", None]
    assert store.pending_images() == 0
    assert store.unfinished() == []


def test_a_late_outcome_for_a_cancelled_or_purged_job_changes_nothing(store: JobStore) -> None:
    job_id, _ = store.create(TWO, CaptionOptions())
    assert store.cancel(job_id).status is JobStatus.CANCELLED
    assert not store.finish(job_id, CAPTIONS)
    assert [image.state for image in store.get(job_id).images] == ["cancelled", "cancelled"]
    assert not store.finish("0" * 32, CAPTIONS)


def test_a_result_count_that_fits_no_dispatch_is_ignored(store: JobStore) -> None:
    job_id, _ = store.create(TWO, CaptionOptions())
    assert not store.finish(job_id, CAPTIONS[:1])
    assert store.get(job_id).status is JobStatus.QUEUED


def test_a_job_with_no_caption_fails(store: JobStore) -> None:
    job_id, _ = store.create(TWO[:1], CaptionOptions())
    assert store.fail(job_id, ErrorInfo("invalid_request", "not JSON"))
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.images[0].error == ErrorInfo("invalid_request", "not JSON")


def test_idempotency_keys_are_per_owner(store: JobStore) -> None:
    key = Idempotency("upload-1", "fingerprint-a")
    first, created = store.create(TWO, CaptionOptions(), owner="alice", idempotency=key)
    assert created
    assert store.create(TWO, CaptionOptions(), owner="alice", idempotency=key) == (first, False)
    other, created = store.create(TWO, CaptionOptions(), owner="bob", idempotency=key)
    assert created
    assert other != first
    with pytest.raises(IdempotencyConflict, match=first):
        store.create(TWO, CaptionOptions(), owner="alice", idempotency=Idempotency("upload-1", "fingerprint-b"))


def test_unfinished_jobs_keep_their_request_and_count_attempts(store: JobStore) -> None:
    greedy = CaptionOptions(num_beams=1)
    job_id, _ = store.create(TWO, greedy)
    done_id, _ = store.create(TWO, CaptionOptions())
    store.finish(done_id, CAPTIONS)
    store.started(job_id)
    store.started(job_id)
    assert store.get(job_id).status is JobStatus.RUNNING
    (request,) = store.unfinished()
    assert (request.job_id, request.images, request.options, request.attempts) == (job_id, tuple(TWO), greedy, 2)
    store.requeued(job_id)
    assert store.get(job_id).status is JobStatus.QUEUED
    assert store.unfinished()[0].attempts == 2  # requeuing does not forget the attempts


def test_a_refused_job_is_discarded_and_its_key_freed(store: JobStore) -> None:
    key = Idempotency("k", "f")
    job_id, _ = store.create(TWO, CaptionOptions(), idempotency=key)
    store.discard(job_id)
    assert store.list_jobs() == []
    assert store.create(TWO, CaptionOptions(), idempotency=key)[1]


def test_a_store_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    first = open_store(url)
    job_id, _ = first.create(TWO, CaptionOptions())
    first.close()
    again = open_store(url)
    assert [request.job_id for request in again.unfinished()] == [job_id]


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
    (request,) = store.unfinished()
    assert request.job_id == "a"
    assert request.images == (ImageInput(data=b"\x01\x02"),)  # the image without an outcome yet
    assert store.get("a").status is JobStatus.QUEUED
    assert store.finish("a", [ImageResult(caption="new")])
    assert store.get("a").captions == ["kept", "new"]
    assert store.get("b").captions == ["old"]
    store.close()
    assert open_store(f"sqlite:///{path}").get("b").status is JobStatus.SUCCEEDED  # opening twice is fine
