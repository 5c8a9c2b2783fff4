"""Business failures a workflow reports to its caller, by ``ApplicationError`` type.

A runbook whose catalog entry waits for its result (``RunbookSpec.await_result``) fails with
``ApplicationError(message, type=<one of these>, non_retryable=True)`` when its input is
refused; the API answers with the matching status and the message, so the caller gets a clear
4xx instead of a run that failed later.
"""

from __future__ import annotations

NOT_FOUND = "NotFound"
CONFLICT = "Conflict"
INVALID = "Invalid"

BUSINESS_ERROR_STATUS: dict[str, int] = {NOT_FOUND: 404, CONFLICT: 409, INVALID: 422}
