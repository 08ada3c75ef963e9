"""Every failure as one JSON envelope: ``{"error": {"code", "message", "hint"}}``.

An engine error keeps its class's HTTP status and code; a body pydantic refuses is a
422 naming the field; an HTTP error of the framework (unknown path, wrong method) gets
the same envelope. Anything else is logged and answered as a 500 without details, so a
client never sees a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from cloudlet.engine.operation_records import error_body
from cloudlet.errors import CloudletError

log = logging.getLogger("cloudlet.api")

# Codes of the framework's own HTTP errors, in the engine's words.
_HTTP_CODES = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    422: "invalid_input",
}


class ErrorBody(BaseModel):
    code: str
    message: str
    hint: str | None


class ErrorEnvelope(BaseModel):
    """What every failure answers."""

    error: ErrorBody


# The answers every route may give besides its own (for the schema).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": text}
    for status, text in (
        (400, "invalid input"),
        (401, "no token, or an unknown, expired or revoked one"),
        (404, "no such resource"),
        (409, "the resource's state does not allow it"),
        (412, "the resource changed since the ETag in If-Match"),
        (413, "the body is too large"),
        (422, "the body or a parameter does not match the schema"),
        (423, "another caller holds the resource"),
    )
}


def envelope(status: int, code: str, message: str, hint: str | None = None,
             headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    return JSONResponse(
        {"error": {"code": code, "message": message, "hint": hint}},
        status_code=status,
        headers=headers,
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "the request is not valid"
    first = errors[0]
    kind = first.get("type", "")
    text = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        text = "unknown field"
    elif kind == "missing":
        text = "required field is missing"
    elif kind == "json_invalid":
        text = "the body is not valid JSON"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{_field(tuple(first.get('loc', ())))}: {text}{more}"


async def _cloudlet_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CloudletError)
    body = error_body(exc)
    if exc.http_status >= 500:
        log.warning("request failed: %s", exc.one_line())
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
    return envelope(exc.http_status, body["code"], body["message"], body["hint"], headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return envelope(
        422,
        "invalid_input",
        _validation_message(exc),
        "the API's schema (/api/v1/openapi.json) lists every field",
    )


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "the request failed"
    if exc.status_code == 404 and message == "Not Found":
        message, hint = "no such path in this API", "the schema lists the paths"
    else:
        hint = None
    return envelope(exc.status_code, code, message, hint, dict(exc.headers or {}))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error answering a request", exc_info=exc)
    return envelope(500, "internal", "internal error", "the server's log says more")


def install(app: FastAPI) -> None:
    app.add_exception_handler(CloudletError, _cloudlet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
