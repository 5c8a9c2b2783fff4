"""Payloads of the ``sla-escalation`` runbook (seed 000, "Escalating SLA Breaches")."""

from __future__ import annotations

from dataclasses import dataclass, field

from opsflow.shared.common import RunRecord

# States of a request's SLA, shown by the ``sla_state`` query, the watchlist and OpsSlaState.
OK = "ok"
WATCH = "watch"
BREACHED = "breached"
ESCALATED = "escalated"
RESOLVED = "resolved"

WORKFLOW_TYPE = "sla-escalation"
RECONCILER_TYPE = "sla-reconciler"
# Hours before the due time at which a request joins the watchlist (the seed's "< 24 hours").
WATCH_HOURS = 24

# The newest steps of ``sla-escalation`` (see LEAN_PATCH and ONE_TASK_PATCH in the workflow).
# A run started with this revision takes them without recording patch markers: on the dev
# server each marker is also an upsert of ``TemporalChangeVersion``, a visibility write, and
# the two cost about 3 ms of the server's CPU per armed workflow (of 15 to 19 ms).
REVISION = 2


@dataclass
class SlaNote:
    """A follow-up note written to the request timeline."""

    text: str
    actor: str
    at: str


@dataclass
class SlaEscalationRecord:
    """One supervisor escalation."""

    reason: str
    actor: str
    at: str


@dataclass
class SlaEvent:
    """A signal waiting to be handled (kept across continue-as-new)."""

    kind: str  # "escalate" | "note" | "resolved" | "sla_changed"
    actor: str = "unknown"
    text: str = ""
    new_due_at: str = ""
    seq: int = 0


@dataclass
class SlaCarry:
    """State handed to the next run by continue-as-new."""

    state: str = OK
    breached_due: str = ""
    breached_at: str = ""
    escalations: list[SlaEscalationRecord] = field(default_factory=list)
    notes: list[SlaNote] = field(default_factory=list)
    pending: list[SlaEvent] = field(default_factory=list)
    seq: int = 0
    generation: int = 0


@dataclass
class SlaEscalationInput:
    """Watch one request's SLA until it is resolved (workflow id ``sla:request:<id>``)."""

    request_id: int = field(metadata={"ge": 1, "description": "The service request's id."})
    sla_due_at: str = field(
        metadata={
            "description": "When the SLA falls due (ISO 8601 with a time zone).",
            "examples": ["2026-11-23T12:00:00+00:00"],
        }
    )
    department: str = field(default="", metadata={"description": "Department code (display)."})
    carry: SlaCarry | None = None
    # Continue-as-new once the history has this many events (Temporal also suggests it).
    max_history_events: int = field(default=2000, metadata={"ge": 20, "le": 40000})
    revision: int = field(
        default=0,
        metadata={
            "ge": 0,
            "description": (
                "The workflow code's steps the run takes: opsflow's starters give "
                f"{REVISION} (the newest). Without it the run asks for patch markers, as "
                "runs started by an earlier worker did."
            ),
        },
    )


@dataclass
class EscalateSignal:
    """``escalate``: notify the department's supervisors, priority critical, expedite."""

    reason: str = field(
        metadata={"min_length": 3, "max_length": 500, "description": "Why it is escalated."},
    )
    actor: str = "unknown"


@dataclass
class NoteSignal:
    """``add_note``: a manual follow-up note for the request timeline."""

    text: str = field(metadata={"min_length": 1, "max_length": 2000, "description": "The note."})
    actor: str = "unknown"


@dataclass
class ResolvedSignal:
    """``request_resolved``: the request is resolved; the workflow ends."""

    actor: str = "unknown"


@dataclass
class SlaChangedSignal:
    """``sla_changed``: the due time moved; the timers are re-armed."""

    new_due_at: str = field(
        default="",
        metadata={"description": "New due time (ISO 8601 with a time zone)."},
    )
    actor: str = "unknown"


@dataclass
class SlaState:
    """The ``sla_state`` query."""

    request_id: int
    due_at: str
    state: str
    watch_at: str = ""
    breached_at: str = ""
    escalations: list[SlaEscalationRecord] = field(default_factory=list)
    notes: list[SlaNote] = field(default_factory=list)
    generation: int = 0


@dataclass
class SlaEscalationResult:
    """How the request's SLA ended."""

    request_id: int
    state: str
    due_at: str
    breached: bool
    escalations: int
    notes: int
    ended_by: str


# ----------------------------------------------------------------------------- activities


@dataclass
class SlaSync:
    """Activity input: write the read model row; returns the request's facts."""

    request_id: int
    workflow_id: str
    due_at: str
    state: str
    escalations: int = 0
    breached_at: str = ""
    # The run's row of the ``runs`` read model, written in the same step (start and end).
    run: RunRecord | None = None


@dataclass
class RequestFacts:
    """What the workflow learns about the request from the operated application."""

    request_id: int
    exists: bool = True
    status: str = ""
    department: str = ""
    department_id: int | None = None
    assignee: str = ""
    priority: str = ""


@dataclass
class BreachRequest:
    """Activity input: the automatic status change at the due time (once per due time)."""

    request_id: int
    due_at: str
    workflow_id: str
    actor: str


@dataclass
class BreachOutcome:
    """What the breach did (``changed`` false when already done or the request is closed)."""

    changed: bool
    old_status: str = ""
    new_status: str = ""
    reason: str = ""


@dataclass
class EscalateRequest:
    """Activity input: priority critical, expedited, timeline and audit."""

    request_id: int
    reason: str
    actor: str
    workflow_id: str
    key: str
    # The watchlist row after the escalation, written in the same step.
    sync: SlaSync | None = None
    # The supervisors' notifications, sent by the same step (each idempotent on its own key).
    notices: list[SupervisorNotice] = field(default_factory=list)


@dataclass
class NoteRequest:
    """Activity input: a note to the request timeline."""

    request_id: int
    text: str
    actor: str
    workflow_id: str
    key: str


@dataclass
class SupervisorNotice:
    """Activity input: notify the department's supervisors on one channel ("mail" | "sms")."""

    request_id: int
    channel: str
    idempotency_key: str
    subject: str
    body: str


@dataclass
class ReconcileInput:
    """The reconciler's input (scheduled every 5 minutes)."""

    concurrency: int = field(default=20, metadata={"ge": 1, "le": 200})
    organization_id: int | None = field(
        default=None,
        metadata={"ge": 1, "description": "Reconcile one tenant only (all when omitted)."},
    )


@dataclass
class ReconcileResult:
    """What the reconciler did."""

    open_requests: int = 0
    started: int = 0
    rearmed: int = 0
    ended: int = 0
    failed: int = 0
