"""Error responses: every failure is JSON with a clear message, never a stack trace.

Client mistakes answer 4xx with ``{"detail": "message"}`` (or, for schema violations,
``{"detail": [{"loc", "msg", "type"}], "message": "..."}``); an outage of Temporal or a database
answers 503 naming what is down. Messages never carry secrets: database and Temporal error texts
are logged (redacted) but not returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import RPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

log = structlog.get_logger("opsflow.api")


class ServiceUnavailable(Exception):
    """A dependency (Temporal, a database, S3) cannot be reached: answered with 503."""

    def __init__(self, service: str, reason: str = "unreachable") -> None:
        super().__init__(f"{service} is unavailable: {reason}")
        self.service = service
        self.reason = reason


class BodyTooLarge(StarletteHTTPException):
    """The request body exceeds the API's limit (raised while the body streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"request body larger than {limit} bytes is refused"
        )


def format_loc(loc: Iterable[Any]) -> str:
    """Render a pydantic error location as a dotted field path (``body.hours``)."""
    return ".".join(str(part) for part in loc) or "(root)"


def clean_errors(errors: Sequence[Any], prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Return pydantic errors as ``{"loc", "msg", "type"}`` without the offending input.

    The input is dropped because a client may have put a secret in the wrong field, and
    echoing it back would put it into proxies' and clients' logs.
    """
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = [*prefix, *err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "invalid")), "type": err.get("type")})
    return out


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """Return a 422 response naming every field that failed."""
    message = "; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in errors[:10])
    return JSONResponse(
        status_code=422, content={"detail": errors, "message": f"invalid input: {message}"}
    )


class InputInvalid(Exception):
    """The body or argument does not match the runbook's schema (answered with 422)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid input")
        self.errors = errors


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "-"))


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": exc.detail},
        headers=getattr(exc, "headers", None),
    )


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = clean_errors(exc.errors())
    log.info("request invalid", errors=errors)
    return validation_response(errors)


async def _input_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InputInvalid)
    log.info("input invalid", errors=exc.errors)
    return validation_response(exc.errors)


def _unavailable(service: str, request: Request) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={
            "detail": f"{service} is unavailable; try again shortly",
            "service": service,
            "request_id": _request_id(request),
        },
        headers={"Retry-After": "5"},
    )


async def _service_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceUnavailable)
    log.warning("dependency unavailable", service=exc.service, reason=exc.reason)
    return _unavailable(exc.service, request)


# RPC codes a client's input can cause: they answer 4xx, never 5xx.
_CLIENT_RPC = {
    RPCStatusCode.NOT_FOUND: 404,
    RPCStatusCode.INVALID_ARGUMENT: 422,
    RPCStatusCode.ALREADY_EXISTS: 409,
    RPCStatusCode.FAILED_PRECONDITION: 409,
}


async def _rpc_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RPCError)
    status = _CLIENT_RPC.get(exc.status)
    if status is not None:
        log.info("temporal refused the request", rpc_status=exc.status.name, error=exc.message)
        return JSONResponse(
            status_code=status,
            content={"detail": f"Temporal refused the request ({exc.status.name.lower()})"},
        )
    log.warning("temporal call failed", rpc_status=exc.status.name, error=exc.message)
    return _unavailable("temporal", request)


async def _rpc_timeout(request: Request, exc: Exception) -> JSONResponse:
    log.warning("temporal call timed out", error=str(exc))
    return _unavailable("temporal", request)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Last resort: the traceback goes to the log (redacted), the client gets a request id.
    log.error("unhandled error", exc_info=exc)
    return JSONResponse(
        status_code=500,
        content={
            "detail": "internal error; the request id identifies it in the API log",
            "request_id": _request_id(request),
        },
    )


def _database_errors() -> tuple[type[Exception], ...]:
    import psycopg
    import psycopg_pool

    return (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", error=str(exc))
    return _unavailable("database", request)


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(InputInvalid, _input_invalid)
    app.add_exception_handler(ServiceUnavailable, _service_unavailable)
    app.add_exception_handler(RPCError, _rpc_error)
    app.add_exception_handler(RPCTimeoutOrCancelledError, _rpc_timeout)
    for cls in _database_errors():
        app.add_exception_handler(cls, _database_error)
    app.add_exception_handler(Exception, _unexpected)
