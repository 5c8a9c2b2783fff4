"""Pure ASGI middleware: request ids, request log and metrics, and the body size limit.

Both are plain ASGI callables (no ``BaseHTTPMiddleware``), so they add no task switch, keep
contextvars intact and never buffer the response.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsflow.api.errors import BodyTooLarge
from opsflow.api.metrics import ApiMetrics

log = structlog.get_logger("opsflow.api")

MAX_BODY_BYTES = 1024 * 1024

# A client-supplied request id is echoed only if it is short and plain, so a header cannot
# inject anything into logs or responses.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, before any route code runs.

    A declared ``Content-Length`` over the limit is refused at once, before authentication or
    parsing; a chunked body is counted as it streams and refused when it crosses the limit.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            log.info("request body too large", declared=declared)
            await _send_json(
                send, 413, {"detail": BodyTooLarge(self.limit).detail}, [(b"connection", b"close")]
            )
            return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the exception handlers answer; this covers a body read outside a route.
            if started:
                raise
            log.info("request body too large", received=received)
            await _send_json(send, 413, {"detail": exc.detail}, [(b"connection", b"close")])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", []):
        if name == wanted:
            return bytes(value).decode("latin-1")
    return None


class RequestContextMiddleware:
    """Give each request an id, log one line per request and count it in the metrics.

    The actor is taken from ``scope["state"]["actor"]``, which authentication sets; the token
    itself is never seen here.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = _header(scope, b"x-request-id")
        request_id = supplied if supplied and _SAFE_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = False
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        error: BaseException | None = None
        # actor starts unset and authentication binds it; leaving the block restores both, so
        # nothing carries over to the next request handled in this context.
        with structlog.contextvars.bound_contextvars(request_id=request_id, actor=None):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # Nothing may reach the client as a stack trace: answer 500 with the request id
                # if no response has begun, and keep the traceback in the (redacted) log.
                error = exc
                if not started:
                    await _send_json(
                        send,
                        500,
                        {
                            "detail": "internal error; the request id identifies it in the API log",
                            "request_id": request_id,
                        },
                        [(b"x-request-id", request_id.encode())],
                    )
                    status = 500
            finally:
                self.metrics.in_flight.dec()
                elapsed = time.perf_counter() - t0
                route = _route_template(scope)
                method = str(scope.get("method", "?"))
                self.metrics.requests.labels(route, method, str(status)).inc()
                self.metrics.latency.labels(route, method).observe(elapsed)
                if status >= 500:
                    kind = "exception" if error is not None else f"http_{status}"
                    self.metrics.errors.labels(route, kind).inc()
                fields: dict[str, Any] = {
                    "method": method,
                    "route": route,
                    "path": scope.get("path", ""),
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 2),
                    "actor": state.get("actor"),
                }
                if error is not None:
                    log.error("request failed", exc_info=error, **fields)
                elif status >= 500:
                    log.warning("request", **fields)
                else:
                    log.info("request", **fields)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Unmatched paths share one label: raw paths would let any client create new series.
    return "<unmatched>"
