"""The PostgreSQL store's tables (the store that several gateways share), versioned in a table of their own.

The same layout as the SQLite store (`blipq.gateway.store_schema`): jobs, per-image outcomes, and the bytes of
unfinished jobs' images apart from their state. Gateways that start at the same moment may all prepare the
schema: each does it in one transaction under a transaction-level advisory lock, so one creates the tables and
the others find them made.
"""

from __future__ import annotations

import uuid
from typing import Any, LiteralString, cast

import psycopg

from blipq.contract.errors import StoreUnavailable

VERSION = 1

#: The advisory lock every gateway takes to prepare the schema (any fixed number; "blipq" in ASCII).
SCHEMA_LOCK = 0x626C697071

#: One row: the schema's version, and the store's id (its gateways' shared reply queue is named after it).
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS blipq_schema (version INTEGER NOT NULL, store_id TEXT NOT NULL)"

_TABLES: tuple[LiteralString, ...] = (
    """
CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    options TEXT NOT NULL,
    n_images INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    owner TEXT,
    idem_key TEXT,
    idem_fingerprint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    published BOOLEAN NOT NULL DEFAULT FALSE
)""",
    "CREATE INDEX jobs_finished ON jobs (finished_at)",
    "CREATE INDEX jobs_owner ON jobs (owner, seq)",
    "CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(owner, ''), idem_key) WHERE idem_key IS NOT NULL",
    """
CREATE TABLE job_images (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    url TEXT,
    state TEXT NOT NULL,
    caption TEXT,
    error_code TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, idx)
)""",
    "CREATE INDEX job_images_pending ON job_images (state) WHERE state IN ('queued', 'running')",
    """
CREATE TABLE job_blobs (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (job_id, idx)
)""",
)

#: The steps from each version to the next: the step at index N brings version N up to N + 1.
_STEPS: tuple[tuple[LiteralString, ...], ...] = (_TABLES,)


async def prepare_schema(connection: psycopg.AsyncConnection[Any]) -> str:
    """Create the tables, or bring an earlier version up to this one, in one transaction; the store's id."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        await connection.execute(_VERSION_TABLE)
        row = await (await connection.execute("SELECT version, store_id FROM blipq_schema")).fetchone()
        version = 0 if row is None else cast(int, row[0])
        if version > VERSION:
            raise StoreUnavailable(
                f"the store is at version {version}, written by a newer blipq (this one knows up to {VERSION})"
            )
        for step in _STEPS[version:]:
            for statement in step:
                await connection.execute(statement)
        if row is None:
            store_id = uuid.uuid4().hex
            await connection.execute(
                "INSERT INTO blipq_schema (version, store_id) VALUES (%s, %s)", (VERSION, store_id)
            )
            return store_id
        if version < VERSION:
            await connection.execute("UPDATE blipq_schema SET version = %s", (VERSION,))
    return cast(str, row[1])
