"""Task queues, search attribute names and workflow ids built from business keys."""

from __future__ import annotations

TASK_QUEUE = "opsflow"

# Custom search attributes registered on the Temporal namespace, with their kinds.
SA_RUNBOOK = "OpsRunbook"
SA_ACTOR = "OpsActor"
SA_TENANT = "OpsTenant"
SA_STATE = "OpsState"
# sla-escalation: the request's SLA, kept current by its workflow.
SA_SLA_STATE = "OpsSlaState"
SA_SLA_DUE_AT = "OpsSlaDueAt"
SA_REQUEST_ID = "OpsRequestId"
SA_DEPARTMENT = "OpsDepartment"
SEARCH_ATTRIBUTES: dict[str, str] = {
    SA_RUNBOOK: "Keyword",
    SA_ACTOR: "Keyword",
    SA_TENANT: "Keyword",
    SA_STATE: "Keyword",
    SA_SLA_STATE: "Keyword",
    SA_SLA_DUE_AT: "Datetime",
    SA_REQUEST_ID: "Keyword",
    SA_DEPARTMENT: "Keyword",
}

# Memo keys every run carries (read by workflows for audit actors).
MEMO_ACTOR = "actor"
MEMO_RUNBOOK = "runbook"

SYSTEM_TENANT = "-"


def schedule_actor(schedule_id: str) -> str:
    """Actor recorded for runs a Temporal Schedule starts."""
    return f"system:{schedule_id}"


def dev_role_elevation_workflow_id(environment: str) -> str:
    """One elevation per environment: ``dev-role-elevation:production``."""
    return f"dev-role-elevation:{environment}"


def health_check_workflow_id(key: str) -> str:
    """Manual health checks: ``health-check:<key>`` (scheduled ones carry the schedule id)."""
    return f"health-check:{key}"


def sla_workflow_id(request_id: int) -> str:
    """One SLA workflow per request: ``sla:request:123``."""
    return f"sla:request:{request_id}"


def triage_workflow_id(request_id: int) -> str:
    """Triage of one request: ``triage:request:123``."""
    return f"triage:request:{request_id}"
