"""JSON Schema files of the AMQP contract for outside publishers: `python -m blipq.contract.json_schemas` writes
them into contract/schema/ (a test checks they match the models)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from blipq.contract.amqp import CaptionReply
from blipq.contract.framing import FramedHeader
from blipq.contract.requests import JobRequest

FOLDER = Path(__file__).parent / "schema"
SCHEMAS: dict[str, type[BaseModel]] = {
    "request.schema.json": JobRequest,
    "framed-request-header.schema.json": FramedHeader,
    "reply.schema.json": CaptionReply,
}


def render(model: type[BaseModel]) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **model.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name, model in SCHEMAS.items():
        (FOLDER / name).write_text(render(model), encoding="utf-8")


if __name__ == "__main__":
    main()
