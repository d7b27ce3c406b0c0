"""Reading JSON request bodies: one set of rules and messages for every route.

FastAPI reads the bodies of routes that declare a model; the error handlers turn its failures into
the same errors `read_json` and `validate` raise for the routes that read bodies themselves.
"""

from __future__ import annotations

import email.message
import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from blipq.contract.errors import InvalidInput, InvalidRequest, UnsupportedMediaType


def is_json(content_type: str | None) -> bool:
    """application/json or application/*+json; a body sent without a Content-Type is read as JSON too."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def unsupported(content_type: str, accepted: str = "JSON (Content-Type: application/json)") -> UnsupportedMediaType:
    return UnsupportedMediaType(f"the body is {content_type[:100]!r}; this route takes {accepted}")


def unreadable(exc: BaseException) -> InvalidInput:
    """The error for a body the JSON decoder refused, whatever the decoder raised."""
    if isinstance(exc, json.JSONDecodeError):
        return InvalidInput(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if isinstance(exc, UnicodeDecodeError):
        return InvalidInput(f"the body is not valid UTF-8 (byte {exc.start} is {exc.object[exc.start]:#04x})")
    if isinstance(exc, RecursionError):
        return InvalidInput("the JSON body is nested too deeply")
    return InvalidInput(f"the body cannot be read as JSON: {type(exc).__name__}")


def read_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise unreadable(exc) from None


def invalid_request(errors: list[ErrorDetails] | list[dict[str, Any]]) -> InvalidRequest:
    """One message naming each problem by its place in the request: "images.0.b64: Input should be ..."."""
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        problems.append(f"{where}: {error['msg']}")
    return InvalidRequest("; ".join(problems))


Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: Any) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from None
