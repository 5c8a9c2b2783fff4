"""The operated application's reference schema (the entities the seed documents name).

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
-- Tenants. placement: on the shared cluster or on a dedicated database.
CREATE TABLE organizations (
    id         bigserial   PRIMARY KEY,
    slug       text        NOT NULL,
    name       text        NOT NULL,
    placement  text        NOT NULL DEFAULT 'shared' CHECK (placement IN ('shared', 'dedicated')),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_slug_key UNIQUE (slug)
);

CREATE TABLE departments (
    id               bigserial PRIMARY KEY,
    organization_id  bigint    NOT NULL REFERENCES organizations (id),
    code             text      NOT NULL,
    name             text      NOT NULL,
    supervisor_email text,
    CONSTRAINT departments_org_code_key UNIQUE (organization_id, code)
);

CREATE TABLE users (
    id                   bigserial   PRIMARY KEY,
    organization_id      bigint      NOT NULL REFERENCES organizations (id),
    department_id        bigint      REFERENCES departments (id),
    username             text        NOT NULL,
    email                text        NOT NULL,
    full_name            text        NOT NULL,
    phone                text,
    role                 text        NOT NULL,
    is_active            boolean     NOT NULL DEFAULT true,
    hashed_password      text,
    must_change_password boolean     NOT NULL DEFAULT false,
    last_login_at        timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username)
);
CREATE INDEX users_organization_idx ON users (organization_id);
CREATE INDEX users_role_idx ON users (role) WHERE is_active;

CREATE TABLE sessions (
    id         bigserial   PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    ip         inet,
    user_agent text
);
CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE service_requests (
    id              bigserial   PRIMARY KEY,
    organization_id bigint      NOT NULL REFERENCES organizations (id),
    department_id   bigint      REFERENCES departments (id),
    reference       text        NOT NULL,
    title           text        NOT NULL,
    description     text,
    status          text        NOT NULL DEFAULT 'new' CHECK (status IN
                        ('new', 'triaged', 'assigned', 'in_progress', 'waiting_external',
                         'resolved', 'closed')),
    priority        text        NOT NULL DEFAULT 'normal'
                        CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    channel         text        NOT NULL DEFAULT 'web'
                        CHECK (channel IN ('web', 'phone', 'email', 'mobile', 'walk_in', 'api')),
    sla_due_at      timestamptz,
    reporter_name   text,
    reporter_email  text,
    reporter_phone  text,
    address         text,
    expedited       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    closed_at       timestamptz,
    CONSTRAINT service_requests_reference_key UNIQUE (reference)
);
CREATE INDEX service_requests_organization_idx ON service_requests (organization_id);
CREATE INDEX service_requests_status_idx ON service_requests (status);
-- The SLA watchlist reads open requests by due time; closed ones never matter to it.
CREATE INDEX service_requests_open_sla_idx ON service_requests (sla_due_at)
    WHERE status NOT IN ('resolved', 'closed');
CREATE INDEX service_requests_created_at_idx ON service_requests (created_at);

CREATE TABLE assignments (
    id            bigserial   PRIMARY KEY,
    request_id    bigint      NOT NULL REFERENCES service_requests (id),
    department_id bigint      REFERENCES departments (id),
    assignee_id   bigint      REFERENCES users (id),
    assigned_by   text        NOT NULL,
    priority      text        NOT NULL DEFAULT 'normal'
                      CHECK (priority IN ('low', 'normal', 'high', 'critical')),
    sla_due_at    timestamptz,
    templates     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX assignments_request_idx ON assignments (request_id);
CREATE INDEX assignments_assignee_idx ON assignments (assignee_id);

CREATE TABLE request_timeline (
    id          bigserial   PRIMARY KEY,
    request_id  bigint      NOT NULL REFERENCES service_requests (id),
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    kind        text        NOT NULL,
    message     text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX request_timeline_request_idx ON request_timeline (request_id, occurred_at);

CREATE TABLE attachments (
    id           bigserial   PRIMARY KEY,
    request_id   bigint      NOT NULL REFERENCES service_requests (id),
    object_key   text        NOT NULL,
    filename     text        NOT NULL,
    content_type text        NOT NULL DEFAULT 'application/octet-stream',
    size_bytes   bigint      NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    sha256       text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX attachments_request_idx ON attachments (request_id);

CREATE TABLE communications (
    id         bigserial   PRIMARY KEY,
    request_id bigint      NOT NULL REFERENCES service_requests (id),
    channel    text        NOT NULL,
    direction  text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    recipient  text,
    subject    text,
    body       text,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX communications_request_idx ON communications (request_id);

-- What users did (user_login, login_failed, pipeline.update, error, ...). Read by the
-- health-check rules (last hour) and the developer-misuse review (role, time window).
CREATE TABLE activity_logs (
    id          bigserial   PRIMARY KEY,
    user_id     bigint      REFERENCES users (id),
    username    text,
    role        text,
    action      text        NOT NULL,
    target      text,
    level       text        NOT NULL DEFAULT 'info' CHECK (level IN ('info', 'warning', 'error')),
    ip          inet,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX activity_logs_occurred_at_idx ON activity_logs (occurred_at);
CREATE INDEX activity_logs_role_occurred_at_idx ON activity_logs (role, occurred_at);

CREATE TABLE settings (
    key        text        PRIMARY KEY,
    value      jsonb       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);
"""

DOWNGRADE_SQL = """
DROP TABLE settings;
DROP TABLE activity_logs;
DROP TABLE communications;
DROP TABLE attachments;
DROP TABLE request_timeline;
DROP TABLE assignments;
DROP TABLE service_requests;
DROP TABLE sessions;
DROP TABLE users;
DROP TABLE departments;
DROP TABLE organizations;
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
