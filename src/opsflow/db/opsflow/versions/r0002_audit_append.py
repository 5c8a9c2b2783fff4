"""Audit chain: append an event in one statement (``opsflow_audit_append``).

Revision ID: r0002_audit_append
Revises: 0001
Create Date: 2026-12-01

Until now a writer took the chain's lock, read the chain's end back to Python, hashed there
and sent the insert: the lock was held across a round trip and across whatever else the
writer's event loop had to do first. The function does the lock, the read, the hash and the
insert inside the server, so the lock is held for microseconds and the commit. Python still
builds the canonical JSON (``opsflow.adapters.audit.canonical_bytes``): it sends the text
around the three values only the server knows (id, time, previous hash), and
``verify_chain`` checks the rows exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "r0002_audit_append"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
-- Appends one event to the hash-chained audit_events and returns it; no row when p_key is
-- given and an event of the same workflow, action and key exists (a retried activity).
--
-- The hashed text is p_head || id || ',"occurred_at":"' || time || p_tail || prev_hash ||
-- p_end, where the caller's fragments are the canonical JSON around those values
-- (opsflow.adapters.audit). VOLATILE, so every statement reads with a fresh snapshot: the
-- chain's end is read after the lock is granted, and the existence check after the key's.
CREATE FUNCTION opsflow_audit_append(
    p_head text, p_tail text, p_end text,
    p_actor text, p_action text, p_target text, p_outcome text, p_details jsonb,
    p_workflow_id text, p_run_id text, p_key text DEFAULT NULL
) RETURNS TABLE (id bigint, occurred_at timestamptz, prev_hash text, hash text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_id   bigint;
    v_prev text;
    v_at   timestamptz;
    v_hash text;
BEGIN
    IF p_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext(p_key));
        -- "=" rather than IS NOT DISTINCT FROM, which no index serves: that was a scan of
        -- the whole table (5 ms at 40,000 rows, growing with it) for every retry-safe event.
        IF p_workflow_id IS NOT NULL THEN
            PERFORM 1 FROM audit_events e
            WHERE e.workflow_id = p_workflow_id AND e.action = p_action
              AND e.details->>'key' = p_key;
        ELSE
            PERFORM 1 FROM audit_events e
            WHERE e.workflow_id IS NULL AND e.action = p_action AND e.details->>'key' = p_key;
        END IF;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    -- The key all audit writers share ("opsaudit" in ASCII; AUDIT_LOCK_KEY in Python).
    PERFORM pg_advisory_xact_lock(8030044998020131188);
    SELECT e.id, e.hash INTO v_id, v_prev FROM audit_events e ORDER BY e.id DESC LIMIT 1;
    v_id := coalesce(v_id, 0) + 1;
    v_prev := coalesce(v_prev, repeat('0', 64));
    -- Read after the lock, so ids and times grow together.
    v_at := clock_timestamp();
    v_hash := encode(sha256(convert_to(
        p_head || v_id::text || ',"occurred_at":"'
        || to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        || p_tail || v_prev || p_end, 'UTF8')), 'hex');
    INSERT INTO audit_events (id, occurred_at, actor, action, target, outcome, details,
                              workflow_id, run_id, prev_hash, hash)
    VALUES (v_id, v_at, p_actor, p_action, p_target, p_outcome, p_details,
            p_workflow_id, p_run_id, v_prev, v_hash);
    RETURN QUERY SELECT v_id, v_at, v_prev, v_hash;
END;
$$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION opsflow_audit_append(text, text, text, text, text, text, text, jsonb, text, text,
                                   text);
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
