"""What only a shared store does, with two `PostgresStore`s (two gateways) on one fresh database of a real
PostgreSQL: one store id, each told of the jobs the other finishes, one job per Idempotency-Key when both are
given it at once, one purge at a time, and a store that cannot be opened says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import psycopg
import pytest

from blipq.contract.errors import StoreUnavailable
from blipq.contract.messages import ImageInput, ImageResult
from blipq.contract.options import CaptionOptions
from blipq.gateway.jobs import Idempotency
from blipq.gateway.pg_store import PURGE_LOCK, PostgresStore

pytestmark = pytest.mark.anyio

ONE = [ImageInput(data=b"an image")]


class Gateway:
    """A store as one gateway holds it, with the notices it got of jobs finished elsewhere."""

    def __init__(self, url: str) -> None:
        self.store = PostgresStore(url)
        self.notices: asyncio.Queue[str | None] = asyncio.Queue()

    async def start(self) -> Gateway:
        await self.store.start(self.notices.put_nowait)
        return self


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[Gateway, Gateway]]:
    first, second = await asyncio.gather(Gateway(postgres_url).start(), Gateway(postgres_url).start())
    yield first, second
    await asyncio.gather(first.store.close(), second.store.close())


async def test_both_gateways_see_one_store_and_hear_of_each_others_finished_jobs(
    two: tuple[Gateway, Gateway],
) -> None:
    first, second = two
    assert first.store.shared_id is not None
    assert first.store.shared_id == second.store.shared_id  # their reply queue's name
    job_id, _ = await first.store.create(ONE, CaptionOptions())
    await first.store.finish(job_id, [ImageResult(caption="a cat")])
    assert await asyncio.wait_for(second.notices.get(), 5) == job_id
    cancelled, _ = await second.store.create(ONE, CaptionOptions())
    await first.store.cancel(cancelled)
    while (notice := await asyncio.wait_for(second.notices.get(), 5)) != cancelled:
        assert notice == job_id  # its own notice of the first job may come in between


async def test_one_key_given_to_both_gateways_at_once_is_one_job(two: tuple[Gateway, Gateway]) -> None:
    first, second = two
    for attempt in range(20):
        key = Idempotency(f"key-{attempt}", "fingerprint")
        made = await asyncio.gather(
            first.store.create(ONE, CaptionOptions(), idempotency=key),
            second.store.create(ONE, CaptionOptions(), idempotency=key),
        )
        assert made[0][0] == made[1][0]
        assert sorted(created for _, created in made) == [False, True]
    assert len(await first.store.list_jobs()) == 20


async def test_a_gateway_does_not_purge_while_another_does(two: tuple[Gateway, Gateway], postgres_url: str) -> None:
    first, _ = two
    job_id, _ = await first.store.create(ONE, CaptionOptions())
    await first.store.finish(job_id, [ImageResult(caption="old")])
    with psycopg.connect(postgres_url) as other:  # another gateway, in the middle of its purge
        other.execute("SELECT pg_advisory_xact_lock(%s)", (PURGE_LOCK,))
        assert await first.store.purge(older_than_s=0) == 0
    assert await first.store.purge(older_than_s=0) == 1


async def test_a_store_that_cannot_be_opened_says_why(postgres_url: str) -> None:
    missing = PostgresStore(urlsplit(postgres_url)._replace(path="/blipq_no_such_database").geturl())
    with pytest.raises(StoreUnavailable, match='database "blipq_no_such_database" does not exist'):
        await missing.start(lambda job_id: None)
