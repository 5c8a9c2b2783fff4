"""opsflow's own tables: audit chain, runs, tokens, idempotency, notifications, runbook tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
-- Append-only, hash-chained audit log (see opsflow.adapters.audit). ids are assigned by the
-- writer under an advisory lock (previous id + 1), never by a sequence, so the chain has no
-- gaps; UNIQUE (prev_hash) makes a fork impossible even for a writer that skips the lock.
CREATE TABLE audit_events (
    id          bigint      PRIMARY KEY CHECK (id > 0),
    occurred_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    target      text        NOT NULL,
    outcome     text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    workflow_id text,
    run_id      text,
    prev_hash   text        NOT NULL CHECK (prev_hash ~ '^[0-9a-f]{64}$'),
    hash        text        NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT audit_events_hash_key UNIQUE (hash),
    CONSTRAINT audit_events_prev_hash_key UNIQUE (prev_hash)
);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, id);
CREATE INDEX audit_events_action_idx ON audit_events (action, id);
CREATE INDEX audit_events_target_idx ON audit_events (target, id);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
CREATE INDEX audit_events_workflow_idx ON audit_events (workflow_id) WHERE workflow_id IS NOT NULL;

-- Refuses UPDATE, DELETE and TRUNCATE for everyone, the owner included (the service role
-- lacks the privileges anyway). Repairing the table means disabling this trigger: a
-- deliberate, visible act.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING HINT = 'audit events can only be inserted';
END;
$$;
CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

-- Read model of every run (written when a run starts and when it ends).
CREATE TABLE runs (
    workflow_id text        NOT NULL,
    run_id      text        NOT NULL,
    runbook     text        NOT NULL,
    actor       text        NOT NULL,
    tenant      text        NOT NULL DEFAULT '-',
    status      text        NOT NULL,
    input       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    result      jsonb,
    failure     text,
    figures     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX runs_started_at_idx ON runs (started_at DESC);
CREATE INDEX runs_runbook_idx ON runs (runbook, started_at DESC);
CREATE INDEX runs_status_idx ON runs (status, started_at DESC);
CREATE INDEX runs_actor_idx ON runs (actor, started_at DESC);
CREATE INDEX runs_tenant_idx ON runs (tenant, started_at DESC);
CREATE INDEX runs_workflow_latest_idx ON runs (workflow_id, started_at DESC);

-- Bearer tokens: only the SHA-256 of the token is stored. A name is unique among active
-- tokens, so a revoked token's name can be issued again.
CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role         text        NOT NULL CHECK (role IN
                     ('operator', 'supervisor', 'auditor', 'compliance', 'admin', 'superadmin')),
    token_hash   text        NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash)
);
CREATE UNIQUE INDEX api_tokens_active_name_key ON api_tokens (name) WHERE revoked_at IS NULL;
CREATE INDEX api_tokens_name_idx ON api_tokens (name);

-- Idempotency-Key header: the first request with a key wins; a repeat gets its response.
CREATE TABLE idempotency_keys (
    actor          text        NOT NULL,
    key            text        NOT NULL,
    runbook        text        NOT NULL,
    request_sha256 text        NOT NULL,
    workflow_id    text        NOT NULL,
    run_id         text,
    response       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- Outgoing mail and SMS: the idempotency key makes a retried activity send once.
CREATE TABLE notifications (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL,
    channel         text        NOT NULL DEFAULT 'email',
    recipients      text[]      NOT NULL DEFAULT '{}',
    subject         text,
    status          text        NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'sent', 'failed', 'suppressed')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT notifications_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX notifications_status_created_idx ON notifications (status, created_at);

-- health-check runbook: one row per check, and the alerts it raised and resolved.
CREATE TABLE health_check_runs (
    id             bigserial        PRIMARY KEY,
    check_id       text             NOT NULL,
    workflow_id    text,
    run_id         text,
    status         text             NOT NULL,
    app_ok         boolean,
    app_latency_ms double precision,
    observation    jsonb            NOT NULL DEFAULT '{}'::jsonb,
    firing         jsonb            NOT NULL DEFAULT '[]'::jsonb,
    raised         text[]           NOT NULL DEFAULT '{}',
    resolved       text[]           NOT NULL DEFAULT '{}',
    checked_at     timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT health_check_runs_check_id_key UNIQUE (check_id)
);
CREATE INDEX health_check_runs_checked_at_idx ON health_check_runs (checked_at DESC);

CREATE TABLE health_alerts (
    id                bigserial        PRIMARY KEY,
    key               text             NOT NULL,
    rule              text             NOT NULL,
    message           text             NOT NULL,
    value             double precision NOT NULL DEFAULT 0,
    threshold         double precision NOT NULL DEFAULT 0,
    raised_at         timestamptz      NOT NULL DEFAULT now(),
    raised_check_id   text             NOT NULL,
    resolved_at       timestamptz,
    resolved_check_id text
);
-- At most one open alert per key: raising twice is a no-op (ON CONFLICT), not a second mail.
CREATE UNIQUE INDEX health_alerts_open_key ON health_alerts (key) WHERE resolved_at IS NULL;
CREATE INDEX health_alerts_raised_at_idx ON health_alerts (raised_at DESC);

-- dev-role-elevation runbook: one row per grant window.
CREATE TABLE dev_role_elevation_runs (
    workflow_id            text        NOT NULL,
    run_id                 text        NOT NULL,
    environment            text        NOT NULL,
    granted_by             text        NOT NULL,
    reason                 text        NOT NULL,
    hours                  integer     NOT NULL CHECK (hours BETWEEN 1 AND 72),
    granted_at             timestamptz NOT NULL,
    expires_at             timestamptz NOT NULL,
    ended_at               timestamptz,
    ended_by               text,
    developer_action_count integer,
    PRIMARY KEY (workflow_id, run_id)
);
CREATE INDEX dev_role_elevation_runs_env_idx
    ON dev_role_elevation_runs (environment, granted_at DESC);
"""

DOWNGRADE_SQL = """
DROP TABLE dev_role_elevation_runs;
DROP TABLE health_alerts;
DROP TABLE health_check_runs;
DROP TABLE notifications;
DROP TABLE idempotency_keys;
DROP TABLE api_tokens;
DROP TABLE runs;
DROP TABLE audit_events;
DROP FUNCTION audit_events_append_only();
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
