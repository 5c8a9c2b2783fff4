"""The API's routers, one module per area; ``opsflow.api.app`` includes them all."""

from __future__ import annotations

from typing import Any

from opsflow.api.schemas import ErrorOut

# Error answers every authenticated route can give, for the OpenAPI page.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, unknown or revoked bearer token."},
    403: {"model": ErrorOut, "description": "The token's role may not do this."},
    503: {"model": ErrorOut, "description": "Temporal or a database is unavailable."},
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not valid JSON."},
    413: {"model": ErrorOut, "description": "The body is larger than 1 MiB."},
    422: {
        "model": ErrorOut,
        "description": "The body does not match the schema (names the field).",
    },
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown runbook, run, signal, update or query."},
}
