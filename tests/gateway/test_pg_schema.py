"""The PostgreSQL store's schema on a real PostgreSQL (a fresh database per test): made once, by however many
gateways start together, kept by the next start, and refused when a newer blipq wrote it."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from blipq.contract.errors import StoreUnavailable
from blipq.gateway.pg_schema import VERSION, prepare_schema


async def prepare(url: str) -> str:
    async with await psycopg.AsyncConnection.connect(url) as connection:
        return await prepare_schema(connection)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


def test_gateways_starting_together_make_the_tables_once(postgres_url: str) -> None:
    async def together() -> list[str]:
        return await asyncio.gather(*(prepare(postgres_url) for _ in range(4)))

    store_ids = asyncio.run(together())  # without the lock, three would fail on CREATE TABLE
    assert len(set(store_ids)) == 1  # one store: its gateways share one reply queue
    assert tables(postgres_url) == {"blipq_schema", "jobs", "job_images", "job_blobs"}
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT version, store_id FROM blipq_schema").fetchall() == [(VERSION, store_ids[0])]


def test_the_next_start_keeps_what_is_stored(postgres_url: str) -> None:
    store_id = asyncio.run(prepare(postgres_url))
    with psycopg.connect(postgres_url) as connection:
        connection.execute(
            "INSERT INTO jobs (id, status, options, n_images, created_at) VALUES ('kept', 'queued', '{}', 1, 0)"
        )
    assert asyncio.run(prepare(postgres_url)) == store_id
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT id FROM jobs").fetchall() == [("kept",)]


def test_a_store_written_by_a_newer_blipq_is_refused(postgres_url: str) -> None:
    asyncio.run(prepare(postgres_url))
    with psycopg.connect(postgres_url) as connection:
        connection.execute("UPDATE blipq_schema SET version = %s", (VERSION + 1,))
    with pytest.raises(StoreUnavailable, match="written by a newer blipq"):
        asyncio.run(prepare(postgres_url))
