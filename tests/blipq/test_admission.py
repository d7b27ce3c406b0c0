"""The embedded mode holds a bounded part of its queue in memory: jobs past the bound wait in the store by their
id alone, are read back in order as room frees up, and every one is answered with the engine's captions."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from blipq.admission import Admission
from blipq.contract.messages import ImageInput
from blipq.contract.options import CaptionOptions
from blipq.embedded import as_dispatch
from blipq.gateway.app import create_app
from blipq.gateway.broker import Dispatch
from blipq.gateway.jobs import JobStatus
from blipq.gateway.settings import GatewaySettings
from blipq.gateway.store import Store, open_store
from blipq.inference.batcher import BatcherConfig
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.gateway.conftest import HeldModelBroker, finished_job
from tests.helpers import pictures
from tests.server import wait_until


def reading(store: Store) -> Callable[[str], Dispatch | None]:
    """The admission's read of a deferred job, from its own thread."""
    return lambda job_id: as_dispatch(asyncio.run(store.request(job_id)))


def test_jobs_past_the_bound_wait_in_the_store_and_run_in_order_as_room_frees_up(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    ran: list[Dispatch] = []
    admission = Admission(ran.append, reading(store), max_images=3, max_bytes=10**9)
    admission.start()
    try:
        images = [ImageInput(data=bytes([n]) * 100) for n in range(2)]
        ids = [asyncio.run(store.create(images, CaptionOptions()))[0] for _ in range(5)]
        for job_id in ids:
            admission.offer(Dispatch(job_id, images, CaptionOptions()))
        assert [dispatch.job_id for dispatch in ran] == ids[:2]  # 2 + 2 images: the bound of 3 is reached
        assert (admission.deferred, admission.held) == (3, (4, 400))
        asyncio.run(store.cancel(ids[2]))  # cancelled while it waited: never read back
        admission.finished(ids[0])
        wait_until(lambda: len(ran) == 3, timeout_s=10)
        assert ran[2] == Dispatch(ids[3], tuple(images), CaptionOptions(), (0, 1))  # read back from the store
        assert admission.deferred == 1
        admission.finished(ids[1])
        admission.finished(ids[3])
        wait_until(lambda: len(ran) == 4, timeout_s=10)
        assert (ran[3].job_id, admission.deferred) == (ids[4], 0)
    finally:
        admission.stop()
        asyncio.run(store.close())


def test_a_byte_bound_defers_as_well_and_one_job_alone_always_runs(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    ran: list[Dispatch] = []
    admission = Admission(ran.append, reading(store), max_images=100, max_bytes=1000)
    big = [ImageInput(data=b"x" * 5000)]
    first, second = (asyncio.run(store.create(big, CaptionOptions()))[0] for _ in range(2))
    admission.offer(Dispatch(first, big, CaptionOptions()))  # over the bound alone: nothing else is held
    admission.offer(Dispatch(second, big, CaptionOptions()))
    assert ([dispatch.job_id for dispatch in ran], admission.deferred) == ([first], 1)
    asyncio.run(store.close())


def test_the_service_answers_every_job_when_most_waited_in_the_store(tmp_path: Path, engine: CaptionEngine) -> None:
    settings = GatewaySettings(store=f"sqlite:///{tmp_path}/store.db")
    store = open_store(settings.store)
    broker = HeldModelBroker(engine, BatcherConfig(max_batch=4), store, max_held_images=3)
    batches = [pictures(6)[index : index + 2] for index in range(0, 6, 2)] * 2
    with TestClient(create_app(settings, store, broker)) as client:
        ids = [
            client.post("/v1/jobs", json={"images": [{"b64": base64.b64encode(i).decode()} for i in batch]}).json()[
                "id"
            ]
            for batch in batches
        ]
        assert broker.held is not None
        assert [dispatch.job_id for dispatch in broker.held] == ids[:2]  # the others wait by id only
        assert broker.admission.deferred == len(ids) - 2
        broker.run_model()
        for job_id, batch in zip(ids, batches, strict=True):
            job = finished_job(client, job_id)
            assert job.status is JobStatus.SUCCEEDED
            assert job.captions == engine.caption([decode_image(image) for image in batch], CaptionOptions())
        assert (broker.admission.deferred, broker.admission.held) == (0, (0, 0))
