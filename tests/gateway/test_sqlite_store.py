"""The SQLite backend's own behaviour: the file survives reopening, and stores of earlier layouts are carried
over (the behaviour both backends share is in test_store.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blipq.contract.errors import StoreUnavailable
from blipq.contract.messages import ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import JobStatus
from blipq.gateway.sqlite_store import SqliteStore
from blipq.gateway.store import StoredRequest, open_store

pytestmark = pytest.mark.anyio

TWO = [ImageInput(data=b"first image"), ImageInput(url="https://example.test/b.jpg")]


async def unfinished(store: SqliteStore) -> list[StoredRequest]:
    return [request for job in await store.unfinished_jobs() if (request := await store.request(job.job_id))]


async def unpublished(store: SqliteStore) -> list[str]:
    return [job.job_id for job in await store.unfinished_jobs() if not job.published]


def sqlite_store(path: Path) -> SqliteStore:
    return SqliteStore.of(f"sqlite:///{path}")


async def test_a_store_survives_reopening(tmp_path: Path) -> None:
    first = sqlite_store(tmp_path / "store.db")
    job_id, _ = await first.create(TWO, CaptionOptions())
    await first.close()
    again = sqlite_store(tmp_path / "store.db")
    assert [request.job_id for request in await unfinished(again)] == [job_id]
    await again.close()


def test_a_store_url_names_a_file() -> None:
    with pytest.raises(StoreUnavailable, match="unsupported store URL"):
        open_store("mysql://somewhere/db")
    with pytest.raises(StoreUnavailable, match="unsupported store URL"):
        SqliteStore.of("sqlite://")


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


async def test_a_store_of_the_earlier_queue_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(EARLIER_SCHEMA)
    store = sqlite_store(path)
    (request,) = await unfinished(store)
    assert request.job_id == "a"
    assert request.images == (ImageInput(data=b"\x01\x02"),)  # the image without an outcome yet
    assert (await store.get("a")).status is JobStatus.QUEUED
    assert (await store.finish("a", [ImageResult(caption="new")])).new
    assert (await store.get("a")).captions == ["kept", "new"]
    assert (await store.get("b")).captions == ["old"]
    await store.close()
    again = sqlite_store(path)
    assert (await again.get("b")).status is JobStatus.SUCCEEDED  # opening twice is fine
    await again.close()


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


async def test_a_store_of_the_unversioned_layout_moves_its_image_bytes_aside(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1_SCHEMA)
    store = sqlite_store(path)
    (request,) = await unfinished(store)
    assert request.images == (ImageInput(data=b"\x03\x04"), ImageInput(url="https://x.test/c.png"))
    assert request.attempts == 1
    await store.close()
    with sqlite3.connect(path) as db:
        assert "data" not in {row[1] for row in db.execute("PRAGMA table_info(job_images)")}
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
    again = sqlite_store(path)
    assert await unpublished(again) == []  # jobs of earlier versions count as published
    await again.close()


async def test_a_store_of_version_2_learns_which_jobs_were_published(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_1_SCHEMA)
    await sqlite_store(path).close()  # now version 3; back to what version 2 looked like:
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN published")
        db.execute("PRAGMA user_version = 2")
    store = sqlite_store(path)
    assert [request.job_id for request in await unfinished(store)] == ["a"]
    assert await unpublished(store) == []
    await store.close()


async def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blipq.db"
    await sqlite_store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreUnavailable, match="version 99, written by a newer blipq"):
        sqlite_store(path)
