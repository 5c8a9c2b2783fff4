"""Bearer-token authentication and role checks.

Every authenticated request checks its token against ``api_tokens``: read from the table, or
from the API's memory of tokens it verified in the last minute while the database's
announcements of token changes reach it (``opsflow.adapters.token_cache``), so a revoked token
fails on its next request either way. Missing or unknown tokens answer 401 with
``WWW-Authenticate: Bearer``; a valid token with the wrong role answers 403 naming the roles
the action needs. The token itself is never logged or echoed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opsflow.api.deps import MetricsDep, StoreDep
from opsflow.shared.roles import Role

log = structlog.get_logger("opsflow.api")

# Tokens are short ASCII strings; anything else is refused without a database round trip.
_MAX_TOKEN_LEN = 512

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An opsflow API token (`opsflow token create --role R --name N`).",
)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: the token's name and role."""

    name: str
    role: Role

    @property
    def actor(self) -> str:
        """Stable identity recorded in audit events, runs and the Web UI (``OpsActor``)."""
        return f"token:{self.name}:{self.role.value}"


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="opsflow"'},
    )


async def get_caller(
    request: Request,
    store: StoreDep,
    metrics: MetricsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """Authenticate the request's bearer token.

    Raises:
        HTTPException: 401 when the token is missing, malformed, unknown or revoked.

    """
    if credentials is None or not credentials.credentials:
        metrics.auth_failures.labels("missing").inc()
        log.info("unauthenticated request", reason="missing bearer token")
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = credentials.credentials
    if len(token) > _MAX_TOKEN_LEN or not token.isascii() or not token.isprintable():
        metrics.auth_failures.labels("malformed").inc()
        log.info("unauthenticated request", reason="malformed token")
        raise _unauthorized("invalid or revoked token")
    info = await store.authenticate(token)
    if info is None or info.revoked_at is not None:
        metrics.auth_failures.labels("invalid").inc()
        log.info("unauthenticated request", reason="unknown or revoked token")
        raise _unauthorized("invalid or revoked token")
    caller = Caller(name=info.name, role=Role(info.role))
    # The request log line (middleware) and every later log line carry the actor.
    request.state.actor = caller.actor
    structlog.contextvars.bind_contextvars(actor=caller.actor)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def role_list(roles: Iterable[Role]) -> list[str]:
    """Return role names sorted in the order of :class:`Role` (for messages and schemas)."""
    order = list(Role)
    return [r.value for r in sorted(roles, key=order.index)]


def require_role(
    caller: Caller, allowed: Iterable[Role], action: str, metrics: MetricsDep | None = None
) -> None:
    """Refuse the call with 403 unless the caller's role is in ``allowed``.

    Args:
        caller: The authenticated caller.
        allowed: Roles allowed for this action (from the catalog or the route).
        action: What is being attempted, for the message (``start runbook 'health-check'``).
        metrics: Counts the refusal when given.

    Raises:
        HTTPException: 403 naming the roles the action needs.

    """
    allowed_set = frozenset(allowed)
    if caller.role in allowed_set:
        return
    if metrics is not None:
        metrics.auth_failures.labels("forbidden").inc()
    needed = " or ".join(role_list(allowed_set)) or "(no role: nobody may do this through the API)"
    log.info("forbidden", action=action, role=caller.role.value, needed=needed)
    raise HTTPException(
        status_code=403,
        detail=f"{action} needs role {needed}; this token has role {caller.role.value}",
    )
