"""The SQLite store's tables, versioned by `PRAGMA user_version`, and the way up from every earlier layout.

Version 2 keeps the image bytes of unfinished jobs in a table of their own (`job_blobs`): SQLite rewrites a
whole row on every update, so with the bytes beside an image's state, marking it started or done copied a
few hundred kilobytes each time. Version 3 records whether a job's message was confirmed by the broker
(`published`): a job stored but never published (the gateway stopped before the confirm) is published again.
"""

from __future__ import annotations

import sqlite3

from blipq.contract.errors import StoreUnavailable

VERSION = 3

_JOB_IMAGES = """
CREATE TABLE job_images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    url TEXT,
    state TEXT NOT NULL,
    caption TEXT,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, idx)
);
"""
_JOB_BLOBS = """
CREATE TABLE job_blobs (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
"""
_PENDING_INDEX = """
CREATE INDEX IF NOT EXISTS job_images_pending ON job_images(state) WHERE state IN ('queued', 'running');
"""

_TABLES = (
    """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    idem_key TEXT,
    idem_fingerprint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    published INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX jobs_finished ON jobs(finished_at);
CREATE INDEX jobs_owner ON jobs(owner, seq);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(ifnull(owner, ''), idem_key) WHERE idem_key IS NOT NULL;
"""
    + _JOB_IMAGES
    + _PENDING_INDEX
    + _JOB_BLOBS
)

#: Version 2: jobs stored before it were all published (or replayed from the store by the embedded mode).
_FROM_2 = "ALTER TABLE jobs ADD COLUMN published INTEGER NOT NULL DEFAULT 1;"

#: Version 1 (unversioned): the image bytes in job_images.
_FROM_1 = (
    _JOB_BLOBS
    + """
INSERT INTO job_blobs (job_id, idx, data) SELECT job_id, idx, data FROM job_images WHERE data IS NOT NULL;
ALTER TABLE job_images DROP COLUMN data;
"""
    + _PENDING_INDEX
)

#: The claim/lease queue of still earlier versions (an `images` table): its jobs are carried over.
_FROM_QUEUE = (
    "ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;"
    + _JOB_IMAGES
    + _PENDING_INDEX
    + _JOB_BLOBS
    + """
INSERT INTO job_images (job_id, idx, url, state, caption, error_code, error_message)
    SELECT job_id, idx, url, CASE state WHEN 'running' THEN 'queued' ELSE state END,
           caption, error_code, error_message FROM images;
INSERT INTO job_blobs (job_id, idx, data) SELECT job_id, idx, data FROM images WHERE data IS NOT NULL;
UPDATE jobs SET status = 'queued' WHERE status = 'running';
DROP TABLE images;
DROP TABLE IF EXISTS workers;
"""
)


def prepare_schema(db: sqlite3.Connection) -> None:
    """Create the tables, or bring an earlier layout up to this version, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > VERSION:
            raise StoreUnavailable(
                f"the store is at version {version}, written by a newer blipq (this one knows up to {VERSION})"
            )
        if version < VERSION:
            for statement in _statements(_steps_up(db)):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _steps_up(db: sqlite3.Connection) -> str:
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version == 2:
        return _FROM_2
    if "images" in tables:
        return _FROM_QUEUE + _FROM_2
    if "job_images" in tables:
        return _FROM_1 + _FROM_2
    return _TABLES


def _statements(script: str) -> list[str]:
    """`executescript` would commit the transaction first; these run inside it, one by one."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
