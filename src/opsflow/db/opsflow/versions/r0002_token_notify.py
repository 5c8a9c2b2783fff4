"""API tokens: announce every change that can end a token's access (``opsflow_api_tokens``).

Revision ID: r0002_token_notify
Revises: 0001
Create Date: 2026-12-01

The API keeps tokens it has verified in memory (``opsflow.adapters.token_cache``) and drops
one as soon as this channel names it: a revocation, a role or name change, a deleted row. A
TRUNCATE announces ``*`` (drop them all). ``last_used_at``, which lookups refresh, is not a
reason to announce anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0002_token_notify"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
CREATE FUNCTION opsflow_api_tokens_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('opsflow_api_tokens', '*');
    ELSE
        PERFORM pg_notify('opsflow_api_tokens', OLD.id::text);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER api_tokens_notify_change
    AFTER UPDATE OF revoked_at, role, name, token_hash OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION opsflow_api_tokens_notify();
CREATE TRIGGER api_tokens_notify_truncate
    AFTER TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION opsflow_api_tokens_notify();
"""

DOWNGRADE_SQL = """
DROP TRIGGER api_tokens_notify_truncate ON api_tokens;
DROP TRIGGER api_tokens_notify_change ON api_tokens;
DROP FUNCTION opsflow_api_tokens_notify();
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
