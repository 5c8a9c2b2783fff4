"""sla-escalation: the SLA watchlist read model (``sla_watchlist``).

Revision ID: r0002_sla
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0002_sla"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
-- One row per request with an sla-escalation workflow, kept current by the workflow's
-- activities. GET /sla/watchlist reads it (due within 24 h, overdue included); the reconciler
-- compares it with the operated application's open requests.
CREATE TABLE sla_watchlist (
    request_id    bigint      PRIMARY KEY,
    workflow_id   text        NOT NULL,
    reference     text,
    title         text,
    department_id bigint,
    department    text,
    assignee      text,
    priority      text,
    status        text,
    sla_due_at    timestamptz NOT NULL,
    state         text        NOT NULL
                      CHECK (state IN ('ok', 'watch', 'breached', 'escalated', 'resolved')),
    escalations   integer     NOT NULL DEFAULT 0,
    breached_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sla_watchlist_open_due_idx ON sla_watchlist (sla_due_at) WHERE state <> 'resolved';
CREATE INDEX sla_watchlist_department_idx ON sla_watchlist (department, sla_due_at);
"""

DOWNGRADE_SQL = """
DROP TABLE sla_watchlist;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
