"""audit-export-nightly: one row per export attempt of a date (``export_runs``).

Revision ID: r0002_audit_export
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0002_audit_export"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
-- One row per package version of an export date. version 1 is the nightly package; a forced
-- re-run writes version 2, 3, ... (forced = true), never replacing an earlier row.
CREATE TABLE export_runs (
    export_date         date        NOT NULL,
    version             integer     NOT NULL CHECK (version >= 1),
    forced              boolean     NOT NULL DEFAULT false,
    status              text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    workflow_id         text        NOT NULL,
    run_id              text        NOT NULL,
    actor               text        NOT NULL,
    bucket              text        NOT NULL,
    object_key          text        NOT NULL,
    key_id              text,
    snapshot_at         timestamptz,
    row_counts          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    plaintext_bytes     bigint,
    plaintext_sha256    text        CHECK (plaintext_sha256 ~ '^[0-9a-f]{64}$'),
    ciphertext_bytes    bigint,
    ciphertext_sha256   text        CHECK (ciphertext_sha256 ~ '^[0-9a-f]{64}$'),
    manifest            jsonb,
    failure             text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    PRIMARY KEY (export_date, version),
    CONSTRAINT export_runs_object_key UNIQUE (bucket, object_key)
);
-- At most one succeeded nightly package per date (forced versions are additional rows).
CREATE UNIQUE INDEX export_runs_one_nightly ON export_runs (export_date)
    WHERE status = 'succeeded' AND NOT forced;
CREATE INDEX export_runs_workflow_idx ON export_runs (workflow_id, run_id);
"""

DOWNGRADE_SQL = """
DROP TABLE export_runs;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
