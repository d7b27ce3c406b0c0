"""The worker loop on a real SQLite queue and the real (tiny) BLIP engine, run in-process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from blipq.fetch import FetchPolicy
from blipq.images import decode_image
from blipq.jobs import CaptionOptions, ImageInput, JobStatus
from blipq.model.engine import CaptionEngine
from blipq.queue import JobQueue, open_queue
from blipq.worker import Worker, WorkerConfig
from tests.helpers import RunningWorker, encode, noise, pictures


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    queue = open_queue(f"sqlite:///{tmp_path}/queue.db")
    yield queue
    queue.close()


def test_single_image_jobs_are_batched_together(queue: JobQueue, engine: CaptionEngine) -> None:
    data = pictures(8)
    job_ids = [queue.enqueue([ImageInput(data=item)], CaptionOptions()) for item in data]
    worker = Worker(queue, engine, WorkerConfig(max_batch=8, batch_wait_ms=50), model_name="tiny")
    calls_before = engine.generate_calls
    with RunningWorker(worker):
        jobs = [queue.wait(job_id, timeout_s=60) for job_id in job_ids]
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    expected = engine.caption([decode_image(item) for item in data], CaptionOptions())
    assert [job.captions[0] for job in jobs] == expected
    assert engine.generate_calls - calls_before < 8
    assert queue.workers(max_age_s=60)[0].worker_id == worker.info.worker_id


def test_a_bad_image_fails_alone(queue: JobQueue, engine: CaptionEngine, http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "ok.jpg").write_bytes(encode(noise(64, 64, seed=9), "JPEG"))
    inputs = [
        ImageInput(data=pictures(1)[0]),
        ImageInput(data=b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
        ImageInput(url=f"{base}/ok.jpg"),
        ImageInput(url=f"{base}/missing.jpg"),
    ]
    job_id = queue.enqueue(inputs, CaptionOptions(num_beams=1))
    config = WorkerConfig(fetch=FetchPolicy(allow_networks=("127.0.0.0/8",)))
    with RunningWorker(Worker(queue, engine, config, model_name="tiny")):
        job = queue.wait(job_id, timeout_s=60)
    assert job.status is JobStatus.SUCCEEDED
    assert [image.state for image in job.images] == ["done", "failed", "done", "failed"]
    assert job.images[1].error is not None
    assert job.images[1].error.code == "invalid_image"
    assert job.images[1].error.message.startswith("image 1: not a supported image (got an SVG document")
    assert job.images[3].error is not None
    assert job.images[3].error.code == "fetch_failed"
    assert "HTTP 404" in job.images[3].error.message


def test_out_of_memory_splits_the_batch(
    queue: JobQueue, engine: CaptionEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_generate = engine.generate
    sizes: list[int] = []

    def small_gpu(prepared: list[torch.Tensor], options: CaptionOptions) -> list[list[int]]:
        sizes.append(len(prepared))
        if len(prepared) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: more than 2 images)")
        return real_generate(prepared, options)

    monkeypatch.setattr(engine, "generate", small_gpu)
    data = pictures(6)
    job_id = queue.enqueue([ImageInput(data=item) for item in data], CaptionOptions())
    with RunningWorker(Worker(queue, engine, WorkerConfig(max_batch=8), model_name="tiny")):
        job = queue.wait(job_id, timeout_s=60)
    monkeypatch.undo()
    assert job.status is JobStatus.SUCCEEDED
    assert job.captions == engine.caption([decode_image(item) for item in data], CaptionOptions())
    assert sizes == [6, 3, 1, 2, 3, 1, 2]  # halves, then halves of the halves, until they fit


def test_stop_finishes_the_batch_in_hand(queue: JobQueue, engine: CaptionEngine) -> None:
    job_id = queue.enqueue([ImageInput(data=item) for item in pictures(10)], CaptionOptions())
    worker = Worker(queue, engine, WorkerConfig(max_batch=4), model_name="tiny")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    while queue.get(job_id).status is JobStatus.QUEUED:
        threading.Event().wait(0.01)
    stop.set()
    thread.join(60)
    states = [image.state for image in queue.get(job_id).images]
    assert "running" not in states  # everything claimed was finished, nothing left to a lease
    assert states.count("done") >= 4
    assert states.count("done") + states.count("queued") == 10


def test_urls_into_the_network_fail_alone_with_a_clear_error(
    queue: JobQueue, engine: CaptionEngine, http_server: tuple[str, Path]
) -> None:
    """With the default fetch policy (public addresses only) internal URLs are per-image errors."""
    base, root = http_server
    (root / "inside.jpg").write_bytes(encode(noise(64, 64, seed=3), "JPEG"))
    urls = [f"{base}/inside.jpg", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.7/a.jpg"]
    job_id = queue.enqueue([ImageInput(data=pictures(1)[0]), *(ImageInput(url=url) for url in urls)], CaptionOptions())
    with RunningWorker(Worker(queue, engine, WorkerConfig(), model_name="tiny")):
        job = queue.wait(job_id, timeout_s=60)
    assert [image.state for image in job.images] == ["done", "failed", "failed", "failed"]
    for image in job.images[1:]:
        assert image.error is not None
        assert image.error.code == "fetch_failed"
        assert "is not a public address" in image.error.message
