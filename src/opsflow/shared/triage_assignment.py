"""Payloads of the ``triage-assignment`` runbook (seed 000, "Triage & Assignment")."""

from __future__ import annotations

from dataclasses import dataclass, field

# Channel metadata fields a triage may correct (each correction is audited action=update).
CORRECTABLE_FIELDS = (
    "channel",
    "title",
    "description",
    "reporter_name",
    "reporter_email",
    "reporter_phone",
    "address",
)
PRIORITIES = ("low", "normal", "high", "critical")


@dataclass
class TriageAssignmentInput:
    """Validate, assign and prioritise a new request (workflow id ``triage:request:<id>``)."""

    request_id: int = field(metadata={"ge": 1, "description": "The new request's id."})
    department_id: int = field(metadata={"ge": 1, "description": "Department to assign to."})
    assignee_id: int = field(
        metadata={"ge": 1, "description": "Staff member (of that department) to assign."}
    )
    priority: str = field(
        default="normal",
        metadata={"pattern": r"^(low|normal|high|critical)$", "description": "Priority."},
    )
    sla_due_at: str | None = field(
        default=None,
        metadata={
            "description": "SLA override (ISO 8601 with a time zone); else the request's own.",
            "examples": ["2026-11-24T17:00:00+00:00"],
        },
    )
    corrections: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "description": "Channel metadata to fix: " + ", ".join(CORRECTABLE_FIELDS) + ".",
            "examples": [{"channel": "phone", "reporter_phone": "+1 555 0100"}],
        },
    )
    templates: list[str] = field(
        default_factory=list,
        metadata={"description": "Standard response templates to attach."},
    )


@dataclass
class AssignRequest:
    """Activity input: validate and assign in one transaction."""

    inp: TriageAssignmentInput
    actor: str
    workflow_id: str
    run_id: str


@dataclass
class AssignOutcome:
    """What the assignment wrote."""

    assignment_id: int
    department: str
    assignee: str
    sla_due_at: str | None
    corrected: list[str] = field(default_factory=list)


@dataclass
class StartSla:
    """Activity input: signal-with-start the request's ``sla-escalation`` workflow."""

    request_id: int
    sla_due_at: str
    department: str
    actor: str


@dataclass
class TriageAssignmentResult:
    """The triage's outcome."""

    request_id: int
    assignment_id: int
    status: str
    department: str
    assignee: str
    priority: str
    sla_due_at: str | None
    sla_workflow_id: str | None
    corrected: list[str] = field(default_factory=list)
