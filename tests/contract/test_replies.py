"""The reply codec both sides use: what a worker encodes, a gateway decodes to the same results."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from blipq.contract import replies
from blipq.contract.messages import ErrorInfo, ImageResult


def test_results_come_back_as_they_went_in_order_and_errors_included() -> None:
    results = [
        ImageResult(caption="a cat on a mat"),
        ImageResult(error=ErrorInfo("invalid_image", "image 1: not an image")),
        ImageResult(caption=""),  # an empty caption is a caption, not a missing one
    ]
    body = replies.encode_results("job-1", results, "tiny")
    assert json.loads(body)["status"] == "succeeded"
    assert json.loads(body)["model"] == "tiny"
    assert replies.decode(body) == replies.Reply("job-1", results)


def test_a_reply_with_every_image_failed_is_failed() -> None:
    body = replies.encode_results("job-2", [ImageResult(error=ErrorInfo("fetch_failed", "timed out"))], "tiny")
    assert json.loads(body)["status"] == "failed"
    assert replies.decode(body).results[0].error == ErrorInfo("fetch_failed", "timed out")


def test_an_error_reply_carries_no_images_and_one_error() -> None:
    body = replies.encode_error("job-3", ErrorInfo("expired", "the request expired"))
    assert json.loads(body)["images"] == []
    assert replies.decode(body) == replies.Reply("job-3", [], ErrorInfo("expired", "the request expired"))


def test_an_image_with_neither_caption_nor_error_from_another_worker_is_a_model_error() -> None:
    body = json.dumps({"id": "job-4", "status": "succeeded", "images": [{"status": "done"}]}).encode()
    (result,) = replies.decode(body).results
    assert result.error is not None
    assert result.error.code == "model_error"


def test_a_body_that_is_not_a_reply_is_refused() -> None:
    with pytest.raises(ValidationError):
        replies.decode(b'{"id": "job-5"}')
