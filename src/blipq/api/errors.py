"""One error shape for every failure: {"error": {"code": ..., "message": ...}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from blipq.api.service import JobTimeout
from blipq.errors import BlipqError

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BlipqError)
    async def blipq_error(request: Request, exc: BlipqError) -> JSONResponse:
        extra = {"id": exc.job_id} if isinstance(exc, JobTimeout) else {}
        response = error_response(exc.http_status, exc.code, exc.message, **extra)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"] if part != "body") or "body"
            problems.append(f"{where}: {err['msg']}")
        return error_response(422, "invalid_request", "; ".join(problems))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "input_too_large", 415: "unsupported_media_type"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the server logged the details")
