"""API bearer tokens: created, listed, revoked and checked here; only their SHA-256 is stored.

A token is ``opsf_`` followed by 32 random bytes (URL-safe base64). It is shown once, at
creation; the table keeps its SHA-256, so a leaked database does not leak usable tokens, and
lookup is an index probe on the hash (no per-token comparison loop to time).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from opsflow.adapters.audit import append_event
from opsflow.adapters.postgres import autocommit
from opsflow.shared.common import AuditEventIn
from opsflow.shared.roles import Role

TOKEN_PREFIX = "opsf_"  # noqa: S105 - a public marker, not a secret

# last_used_at is a hint for operators, not an access log: writing it on every request would
# turn each authenticated read into a write.
_LAST_USED_GRANULARITY = "1 minute"

_COLUMNS = "id, name, role, created_at, created_by, revoked_at, last_used_at"


@dataclass
class TokenInfo:
    """A token's metadata (never the token itself)."""

    id: int
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenNameTaken(Exception):
    """An active token already has this name."""


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest stored for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _info(row: dict[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


async def create_token(
    pool: AsyncConnectionPool[Any], *, name: str, role: Role, created_by: str
) -> str:
    """Create a token and audit it (``token.create``) in one transaction.

    Args:
        pool: Pool of the opsflow database.
        name: Unique name among active tokens.
        role: The role the token carries.
        created_by: Actor creating it.

    Returns:
        The plaintext token; it is not stored and cannot be shown again.

    Raises:
        TokenNameTaken: An active token already has this name.

    """
    role = Role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        async with pool.connection() as conn, conn.transaction():
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "INSERT INTO api_tokens (name, role, token_hash, created_by)"
                    " VALUES (%s, %s, %s, %s) RETURNING id",
                    (name, role.value, hash_token(token), created_by),
                )
                row = await cur.fetchone()
                assert row is not None
            await append_event(
                conn,
                AuditEventIn(
                    actor=created_by,
                    action="token.create",
                    target=f"token:{name}",
                    details={"role": role.value, "token_id": row["id"]},
                ),
            )
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "api_tokens_active_name_key":
            raise TokenNameTaken(f"an active token named {name!r} already exists") from None
        raise
    return token


async def list_tokens(pool: AsyncConnectionPool[Any]) -> list[TokenInfo]:
    """Return every token, active and revoked, oldest first."""
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY id")
        return [_info(r) for r in await cur.fetchall()]


async def revoke_token(pool: AsyncConnectionPool[Any], name: str, *, actor: str) -> bool:
    """Revoke the active token named ``name`` and audit it (``token.revoke``).

    Args:
        pool: Pool of the opsflow database.
        name: The token's name.
        actor: Who revokes it.

    Returns:
        True if a token was revoked, False if no active token has that name.

    """
    async with pool.connection() as conn, conn.transaction():
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE name = %s AND revoked_at IS NULL RETURNING id, role",
                (name,),
            )
            row = await cur.fetchone()
        if row is None:
            return False
        await append_event(
            conn,
            AuditEventIn(
                actor=actor,
                action="token.revoke",
                target=f"token:{name}",
                details={"role": row["role"], "token_id": row["id"]},
            ),
        )
    return True


async def authenticate(pool: AsyncConnectionPool[Any], token: str) -> TokenInfo | None:
    """Return the active token's metadata, or None for an unknown or revoked token.

    Revocation takes effect at once: every call reads the table. ``last_used_at`` is
    refreshed at most once a minute per token.

    Args:
        pool: Pool of the opsflow database.
        token: The bearer token as presented.

    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    # In autocommit: one round trip for the read (no BEGIN/COMMIT around it), and the rare
    # update of last_used_at commits on its own. The connection goes back as it came.
    async with pool.connection() as conn, autocommit(conn):
        return await _lookup(conn, token)


async def _lookup(conn: psycopg.AsyncConnection[Any], token: str) -> TokenInfo | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_COLUMNS}, (last_used_at IS NULL"
            f" OR last_used_at < now() - interval '{_LAST_USED_GRANULARITY}') AS stale"
            " FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL",
            (hash_token(token),),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        if row["stale"]:
            # The condition is repeated so concurrent requests write at most once a minute.
            await cur.execute(
                "UPDATE api_tokens SET last_used_at = now() WHERE id = %s AND"
                f" (last_used_at IS NULL OR last_used_at < now() - interval"
                f" '{_LAST_USED_GRANULARITY}') RETURNING last_used_at",
                (row["id"],),
            )
            updated = await cur.fetchone()
            if updated is not None:
                row["last_used_at"] = updated["last_used_at"]
        return _info(row)
