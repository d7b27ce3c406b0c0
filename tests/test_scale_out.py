"""Many API nodes and many workers on one real redis-server, under process and Redis failures."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blipq.images import decode_image
from blipq.jobs import CaptionOptions
from blipq.model.engine import CaptionEngine
from tests.helpers import pictures
from tests.redis_server import RedisServer
from tests.server import Server, WorkerProcess, get_job, submit_job, wait_until


def captions(engine: CaptionEngine, images: list[bytes]) -> list[str]:
    return engine.caption([decode_image(image) for image in images], CaptionOptions())


class Cluster:
    def __init__(self, model: Path, root: Path, redis: RedisServer, apis: int, workers: int) -> None:
        self.redis = redis
        self.apis = [Server(model, root / f"api{i}", workers=0, queue=redis.url) for i in range(apis)]
        self.workers = [
            WorkerProcess(model, redis.url, root / f"worker{i}.log", "--max-batch", "4", lease_s=2.0)
            for i in range(workers)
        ]

    def start(self) -> Cluster:
        for worker in self.workers:
            worker.start()
        for api in self.apis:
            api.start(ready=False)
        ready = f"{self.apis[0].url}/readyz"
        wait_until(lambda: len(httpx.get(ready).json().get("workers", [])) == len(self.workers), timeout_s=120)
        return self

    def stop(self) -> None:
        for process in [*self.apis, *self.workers]:
            process.stop()


@pytest.fixture
def redis_aof(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", append_only=True).start()
    yield server
    server.stop()


def test_two_apis_two_workers(
    tiny_checkpoint: Path, tmp_path: Path, redis_aof: RedisServer, engine: CaptionEngine
) -> None:
    cluster = Cluster(tiny_checkpoint, tmp_path, redis_aof, apis=2, workers=2).start()
    try:
        images = pictures(50)
        ids = [submit_job(cluster.apis[i % 2], [image]) for i, image in enumerate(images)]
        blocking = httpx.post(
            f"{cluster.apis[0].url}/captionImageBlocking",
            json={"imgb64s": [base64.b64encode(images[7]).decode()]},
            timeout=120,
        )
        assert blocking.status_code == 200
        assert blocking.json()["result"] == captions(engine, [images[7]])
        wait_until(lambda: all(get_job(cluster.apis[1], job_id)["status"] == "succeeded" for job_id in ids))
        expected = captions(engine, images)
        for index, job_id in enumerate(ids):
            seen_by_other_api = get_job(cluster.apis[(index + 1) % 2], job_id)
            assert seen_by_other_api["images"] == [{"status": "done", "caption": expected[index], "error": None}]
        assert all(worker.alive() for worker in cluster.workers)
    finally:
        cluster.stop()


def test_kill_9_one_worker_the_other_finishes(
    tiny_checkpoint: Path, tmp_path: Path, redis_aof: RedisServer, engine: CaptionEngine
) -> None:
    cluster = Cluster(tiny_checkpoint, tmp_path, redis_aof, apis=1, workers=2).start()
    api = cluster.apis[0]
    try:
        batches = [pictures(40)[i : i + 10] for i in range(0, 40, 10)]
        ids = [submit_job(api, images) for images in batches]
        wait_until(lambda: sum(img["status"] == "done" for j in ids for img in get_job(api, j)["images"]) >= 4)
        cluster.workers[0].kill()
        wait_until(lambda: all(get_job(api, job_id)["status"] == "succeeded" for job_id in ids))
        for job_id, images in zip(ids, batches, strict=True):
            assert [img["caption"] for img in get_job(api, job_id)["images"]] == captions(engine, images)
    finally:
        cluster.stop()


def test_redis_restart_loses_nothing_and_the_api_answers_503_meanwhile(
    tiny_checkpoint: Path, tmp_path: Path, redis_aof: RedisServer, engine: CaptionEngine
) -> None:
    cluster = Cluster(tiny_checkpoint, tmp_path, redis_aof, apis=1, workers=1).start()
    api = cluster.apis[0]
    try:
        batches = [pictures(30)[i : i + 10] for i in range(0, 30, 10)]
        ids = [submit_job(api, images) for images in batches]
        # A blocking request in flight when Redis goes away gets an answer, not a hang or a 500.
        blocked: dict[str, int] = {}
        waiter = threading.Thread(
            target=lambda: blocked.update(
                status=httpx.post(
                    f"{api.url}/captionImageBlocking",
                    json={"imgb64s": [base64.b64encode(img).decode() for img in pictures(12)]},
                    timeout=120,
                ).status_code
            )
        )
        waiter.start()
        redis_aof.stop()
        during = [
            httpx.post(f"{api.url}/v1/jobs", json={"images": [{"b64": base64.b64encode(pictures(1)[0]).decode()}]}),
            httpx.get(f"{api.url}/v1/jobs/{ids[0]}"),
            httpx.get(f"{api.url}/captionImage"),
            httpx.get(f"{api.url}/readyz"),
        ]
        for response in during:
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "queue_unavailable"
        assert httpx.get(f"{api.url}/healthz").status_code == 200
        time.sleep(3)  # the worker keeps retrying meanwhile
        assert all(process.alive() for process in cluster.workers)
        assert api.process is not None
        assert api.process.poll() is None
        redis_aof.start()
        waiter.join(120)
        assert blocked["status"] in (200, 503)
        wait_until(lambda: all(get_job(api, job_id)["status"] == "succeeded" for job_id in ids))
        for job_id, images in zip(ids, batches, strict=True):
            assert [img["caption"] for img in get_job(api, job_id)["images"]] == captions(engine, images)
        assert httpx.get(f"{api.url}/readyz").status_code == 200
    finally:
        cluster.stop()
