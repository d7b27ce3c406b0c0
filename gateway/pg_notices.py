"""A shared store's notices of finished jobs: a job finished or cancelled on any gateway sends `NOTIFY
blipq_finished, '<job id>'` in the transaction that finished it, so the notice arrives once that is committed;
each gateway LISTENs on a connection of its own and wakes its requests waiting for the job."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg import sql

from blipq.contract.amqp import Backoff
from blipq.gateway.store import FinishedElsewhere

log = logging.getLogger(__name__)

FINISHED_CHANNEL = "blipq_finished"
#: How long a gateway waits for PostgreSQL to accept a connection (its pool's and this listener's).
CONNECT_TIMEOUT_S = 10


async def listen_for_finished_jobs(url: str, finished_elsewhere: FinishedElsewhere) -> asyncio.Task[None]:
    """The listening task, returned once it listens (or its first connection failed: it keeps trying); cancel
    it to stop."""
    listening = asyncio.Event()
    task = asyncio.create_task(_listen(url, finished_elsewhere, listening))
    await listening.wait()
    return task


async def _listen(url: str, finished_elsewhere: FinishedElsewhere, listening: asyncio.Event) -> None:
    """LISTEN, reconnecting for as long as the gateway runs. After a reconnection every waiter reads its job
    again: a notice sent while the connection was down is lost."""
    backoff = Backoff()
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            ) as connection:
                await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(FINISHED_CHANNEL)))
                if listening.is_set():
                    finished_elsewhere(None)
                    log.info("listening for finished jobs again")
                listening.set()
                backoff = Backoff()
                async for notice in connection.notifies():
                    finished_elsewhere(notice.payload)
        except psycopg.Error as exc:
            pause_s = backoff.pause_s()
            log.warning("store notices cut off (%s); listening again in %.1f s", exc, pause_s)
            listening.set()  # serve without them meanwhile: a waiter then wakes at its own timeout at worst
            await asyncio.sleep(pause_s)
