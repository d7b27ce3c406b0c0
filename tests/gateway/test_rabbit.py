"""The gateway's RabbitMQ transport: a big job travels as parts, and their replies are merged into one job."""

from __future__ import annotations

import base64

import pytest

from blipq.contract.options import CaptionOptions
from blipq.inference.decode import decode_image
from blipq.inference.engine import CaptionEngine
from tests.gateway.conftest import AppFactory, finished_job
from tests.helpers import pictures

pytestmark = pytest.mark.rabbitmq_only


def test_a_job_split_into_parts_answers_a_blocking_request_once_every_part_is_in(
    make_client: AppFactory, engine: CaptionEngine
) -> None:
    client = make_client(part_images=2)
    images = pictures(5)
    answer = client.post("/captionImageBlocking", json={"imgb64s": [base64.b64encode(i).decode() for i in images]})
    assert answer.status_code == 200, answer.text
    expected = engine.caption([decode_image(image) for image in images], CaptionOptions())
    assert answer.json()["result"] == expected
    metrics = client.get("/metrics").text
    assert 'blipq_job_outcomes_total{first="true"} 3.0' in metrics  # three parts of 2, 2 and 1 images


def test_a_part_the_worker_refuses_fails_its_own_images_only(make_client: AppFactory, engine: CaptionEngine) -> None:
    """Parts of 3 images to a worker that takes 2 per message: the first part is refused (dead-lettered and
    answered `invalid_request` with its part header), the second is captioned, and the job holds both."""
    client = make_client(part_images=3, worker_max_images=2)
    images = pictures(5)
    job_id = client.post("/v1/jobs", json={"images": [{"b64": base64.b64encode(i).decode()} for i in images]}).json()[
        "id"
    ]
    job = finished_job(client, job_id)
    assert job.status.value == "succeeded"
    assert [image.error.code if image.error else None for image in job.images] == ["invalid_request"] * 3 + [None] * 2
    assert job.captions[3:] == engine.caption([decode_image(image) for image in images[3:]], CaptionOptions())
