"""One error shape for every failure: {"error": {"code": ..., "message": ...}}, its status from `error_codes`."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from blipq.contract.errors import BlipqError, ImageFailed
from blipq.gateway.error_codes import ERROR_CODES, HTTP_EXCEPTION_CODES, IMAGE_FAILED_STATUS
from blipq.gateway.json_body import invalid_request, is_json, unreadable, unsupported
from blipq.gateway.service import JobTimeout


def error_response(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status)


def response_for(exc: BlipqError) -> JSONResponse:
    if isinstance(exc, ImageFailed):
        status = IMAGE_FAILED_STATUS
    else:
        status = ERROR_CODES[exc.code].status if exc.code in ERROR_CODES else 500
    extra = {"id": exc.job_id} if isinstance(exc, JobTimeout) else {}
    response = error_response(status, exc.code, exc.message, **extra)
    response.headers.update(exc.headers)
    return response


def _from_validation(request: Request, exc: RequestValidationError) -> BlipqError:
    """FastAPI's request checks, as the errors the routes that read their own bodies raise."""
    errors = exc.errors()
    for error in errors:
        if error["type"] == "json_invalid":
            position = error["loc"][-1]
            return unreadable(json.JSONDecodeError(error["ctx"]["error"], str(exc.body), int(position)))
    content_type = request.headers.get("content-type")
    if content_type and not is_json(content_type) and any(error["loc"][:1] == ("body",) for error in errors):
        return unsupported(content_type)
    return invalid_request(list(errors))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BlipqError)
    async def blipq_error(request: Request, exc: BlipqError) -> JSONResponse:
        return response_for(exc)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return response_for(_from_validation(request, exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's JSON decoding failed with something other than a syntax error (bad UTF-8, nesting).
            return response_for(unreadable(exc.__cause__))
        code = HTTP_EXCEPTION_CODES.get(exc.status_code, "invalid_input" if exc.status_code < 500 else "internal_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, so the server logs its traceback (once).
        return error_response(500, "internal_error", "internal error; the server logged the details")
