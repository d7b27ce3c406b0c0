"""What only the SQLite backend has: its file outlives releases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from blipq.jobs import CaptionOptions, ImageInput
from blipq.queue.sqlite import SqliteQueue

FIRST_RELEASE_JOBS = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, options TEXT NOT NULL,
    n_images INTEGER NOT NULL, n_finished INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL
);
INSERT INTO jobs (id, status, options, n_images, created_at) VALUES ('0123', 'queued', '{}', 0, 1.0);
"""


def test_a_database_from_the_first_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(FIRST_RELEASE_JOBS)
    queue = SqliteQueue(path)
    try:
        assert queue.get("0123").owner is None
        job_id = queue.enqueue([ImageInput(data=b"x")], CaptionOptions(), owner="key-a")
        assert queue.get(job_id).owner == "key-a"
    finally:
        queue.close()
