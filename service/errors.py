"""Every error the gateway answers, as RFC 7807 problem details (application/problem+json).

The one place that maps domain errors to HTTP status codes:

- ``conventions.errors.InputError`` (a bad image, label map or parameter) -> 422
- ``conventions.errors.ModelNotFoundError`` (a model name that is not shipped) -> 422
- ``jobs.pacs.PacsError`` (the configured PACS failed a request) -> 502
- ``ServiceError`` subclasses below -> their own status (400, 401, 403, 404, 409, 413, 415, 503;
  a 503 always carries Retry-After, the full queue's included)
- request validation (FastAPI) -> 422 with the list of offending fields
- Redis or the broker unreachable -> 503; anything else -> 500 without internals.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from conventions.errors import InputError, ModelNotFoundError
from jobs.pacs import PacsError

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
RETRY_AFTER_S = 5  # Redis restarting, no worker yet: seconds, not minutes


class Problem(BaseModel):
    """RFC 7807 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class ServiceError(Exception):
    status = 500
    title = "Internal server error"
    type = "about:blank"

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers


class MalformedRequest(ServiceError):
    status, title, type = 400, "Malformed request", "urn:riir:problem:malformed-request"


class Unauthorized(ServiceError):
    status, title, type = 401, "Missing or wrong API key", "urn:riir:problem:unauthorized"


class Forbidden(ServiceError):
    status, title, type = 403, "Not allowed on this server", "urn:riir:problem:forbidden"


class NotFound(ServiceError):
    status, title, type = 404, "Not found", "urn:riir:problem:not-found"


class Conflict(ServiceError):
    status, title, type = 409, "Not available in the job's state", "urn:riir:problem:conflict"


class PayloadTooLarge(ServiceError):
    status, title, type = 413, "Upload too large", "urn:riir:problem:too-large"


class UnsupportedMediaType(ServiceError):
    status, title, type = 415, "Unsupported media type", "urn:riir:problem:media-type"


class InvalidParameters(ServiceError):
    status, title, type = 422, "Invalid parameters", "urn:riir:problem:invalid-parameters"


class Unavailable(ServiceError):
    status, title, type = 503, "Service unavailable", "urn:riir:problem:unavailable"

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        # Every 503 tells the client when to come back (RFC 9110 Retry-After).
        super().__init__(detail, {"Retry-After": str(RETRY_AFTER_S), **(headers or {})})


class QueueFull(Unavailable):
    title, type = "Queue full", "urn:riir:problem:queue-full"


def problem(
    status: int,
    title: str,
    detail: str | None,
    request: Request | None = None,
    type: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = Problem(
        type=type,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        **extra,
    )
    return JSONResponse(
        jsonable_encoder(body, exclude_none=True),
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status documented as a problem response."""
    schema = Problem.model_json_schema()
    return {
        status: {"description": HTTPStatus(status).phrase, "content": {PROBLEM: {"schema": schema}}}
        for status in statuses
    }


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, request, exc.type, exc.headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError) -> JSONResponse:
        return problem(422, "Invalid input", str(exc), request, "urn:riir:problem:invalid-input")

    @app.exception_handler(ModelNotFoundError)
    async def model_error(request: Request, exc: ModelNotFoundError) -> JSONResponse:
        return problem(422, "Unknown model", str(exc), request, "urn:riir:problem:unknown-model")

    @app.exception_handler(PacsError)
    async def pacs_error(request: Request, exc: PacsError) -> JSONResponse:
        return problem(502, "PACS error", str(exc), request, "urn:riir:problem:pacs")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(
            422,
            "Invalid parameters",
            detail,
            request,
            "urn:riir:problem:invalid-parameters",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem(
            exc.status_code, title, detail, request, headers=getattr(exc, "headers", None)
        )

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("queue unavailable: %s", exc)
        return problem(
            503,
            "Service unavailable",
            "the job queue (Redis) is unreachable; retry shortly",
            request,
            Unavailable.type,
            {"Retry-After": str(RETRY_AFTER_S)},
        )

    for exc_type in (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        OperationalError,
    ):
        app.add_exception_handler(exc_type, unavailable)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "Internal server error",
            "an unexpected error occurred; it has been logged",
            request,
        )
