"""One mapping from error codes to HTTP statuses: every code raised over HTTP is in it, and README and
the OpenAPI schema say the same."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from blipq.contract import errors
from blipq.gateway.error_codes import ERROR_CODES, codes_with_status
from tests.gateway.conftest import AppFactory

README = Path(__file__).parents[2] / "README.md"
#: Codes that only ever describe one image of a job (or a row of `blipq caption`), never a whole request.
PER_IMAGE_CODES = {"unreadable_input", "fetch_failed", "model_error"}


def _error_classes() -> list[type[errors.BlipqError]]:
    found = [errors.BlipqError]
    for cls in found:
        found += cls.__subclasses__()
    return found


def test_every_error_class_has_a_mapped_code() -> None:
    codes = {cls.code for cls in _error_classes() if cls is not errors.ImageFailed}
    assert codes - PER_IMAGE_CODES <= set(ERROR_CODES)


def test_the_readme_table_is_the_mapping() -> None:
    rows = re.findall(r"^\| (\d{3}) \| `(\w+)` \|", README.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert sorted((int(status), code) for status, code in rows) == sorted(
        (error.status, code) for code, error in ERROR_CODES.items()
    )


def test_the_openapi_schema_documents_the_codes_of_each_status(make_client: AppFactory) -> None:
    client: TestClient = make_client()
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in (("/v1/jobs", "post"), ("/captionImage", "post"), ("/v1/captions", "post")):
        responses = paths[path][method]["responses"]
        for status in (400, 415, 422):
            assert all(f"`{code}`" in responses[str(status)]["description"] for code in codes_with_status(status))
    assert "`model_unavailable`" in paths["/readyz"]["get"]["responses"]["503"]["description"]
