"""The JSON Schema files shipped for outside publishers say what the models accept and produce."""

from __future__ import annotations

import json

import pytest

from blipq.contract.amqp import CaptionReply, ReplyError
from blipq.contract.json_schemas import FOLDER, SCHEMAS, render


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_shipped_schema_files_match_the_models(name: str) -> None:
    """Regenerate with `python -m blipq.contract.json_schemas` after changing a model."""
    assert (FOLDER / name).read_text(encoding="utf-8") == render(SCHEMAS[name])


def test_an_error_reply_fits_the_reply_schema() -> None:
    reply = CaptionReply(id="abc", status="failed", error=ReplyError(code="expired", message="too late"))
    schema = json.loads((FOLDER / "reply.schema.json").read_text())
    assert set(json.loads(reply.model_dump_json())) == set(schema["properties"])
    assert schema["required"] == ["id", "status"]
