"""The worker's data converter decodes dataclasses as the SDK's default does, reading types once."""

from __future__ import annotations

import gc
import json
import typing
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from opsflow.shared.common import RunRecord
from opsflow.shared.sla_escalation import (
    EscalateRequest,
    SlaCarry,
    SlaEscalationInput,
    SlaEscalationRecord,
    SlaEvent,
    SlaNote,
    SlaState,
    SlaSync,
    SupervisorNotice,
)
from opsflow.worker import converter
from opsflow.worker.converter import DATA_CONVERTER

DEFAULT = DataConverter.default.payload_converter
OURS = DATA_CONVERTER.payload_converter


@dataclass(frozen=True)
class Frozen:
    name: str
    tags: list[str] = field(default_factory=list)


@dataclass
class WithLateField:
    value: int
    derived: str = field(default="", init=False)


SAMPLES: list[Any] = [
    SlaEscalationInput(
        request_id=7,
        sla_due_at="2026-12-02T10:00:00+00:00",
        department="ROADS",
        carry=SlaCarry(
            state="escalated",
            breached_due="2026-12-01T10:00:00+00:00",
            escalations=[SlaEscalationRecord(reason="flood", actor="sup", at="t1")],
            notes=[SlaNote(text="called back", actor="op", at="t2")],
            pending=[SlaEvent(kind="note", actor="op", text="ünïcode", seq=4)],
            seq=4,
            generation=2,
        ),
        max_history_events=500,
    ),
    SlaEscalationInput(request_id=8, sla_due_at="2026-12-02T10:00:00+00:00"),
    EscalateRequest(
        request_id=7,
        reason="flood",
        actor="sup",
        workflow_id="sla:request:7",
        key="sla:request:7/escalate/1",
        sync=SlaSync(
            request_id=7,
            workflow_id="sla:request:7",
            due_at="2026-12-02T10:00:00+00:00",
            state="escalated",
            escalations=1,
            run=RunRecord(
                workflow_id="sla:request:7",
                run_id="r1",
                runbook="sla-escalation",
                actor="sup",
                status="running",
                input={"request_id": 7, "nested": {"a": [1, 2.5, None]}},
                result=None,
            ),
        ),
        notices=[
            SupervisorNotice(
                request_id=7, channel="mail", idempotency_key="k/mail", subject="s", body="b"
            ),
            SupervisorNotice(
                request_id=7, channel="sms", idempotency_key="k/sms", subject="s", body="b"
            ),
        ],
    ),
    SlaState(request_id=7, due_at="d", state="watch"),
    Frozen(name="x", tags=["a", "b"]),
]


def _round_trip(value: Any) -> tuple[Any, Any]:
    payload = DEFAULT.to_payloads([value])[0]
    kind = type(value)
    return (
        OURS.from_payloads([payload], [kind])[0],
        DEFAULT.from_payloads([payload], [kind])[0],
    )


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_decodes_exactly_as_the_sdk_default(value: Any) -> None:
    ours, sdk = _round_trip(value)
    assert ours == sdk == value
    assert type(ours) is type(value)


def test_payloads_are_the_sdk_defaults() -> None:
    """What the worker writes, a bare client reads (and the other way round)."""
    for value in SAMPLES:
        assert OURS.to_payloads([value]) == DEFAULT.to_payloads([value])


def _payload(obj: dict[str, Any]) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(obj).encode())


def test_unknown_keys_ignored_defaults_kept_init_false_set_afterwards() -> None:
    decoded = OURS.from_payloads(
        [_payload({"request_id": 3, "sla_due_at": "d", "added_by_a_newer_worker": 1})],
        [SlaEscalationInput],
    )[0]
    assert decoded == SlaEscalationInput(request_id=3, sla_due_at="d")
    late = OURS.from_payloads([_payload({"value": 2, "derived": "kept"})], [WithLateField])[0]
    assert (late.value, late.derived) == (2, "kept")


def test_bad_input_fails_like_the_sdk_default() -> None:
    wrong = _payload({"request_id": "seven", "sla_due_at": "d"})
    with pytest.raises(TypeError, match="field request_id on dataclass"):
        OURS.from_payloads([wrong], [SlaEscalationInput])
    with pytest.raises(TypeError):
        DEFAULT.from_payloads([wrong], [SlaEscalationInput])
    missing = _payload({"sla_due_at": "d"})
    with pytest.raises(TypeError, match="request_id"):
        OURS.from_payloads([missing], [SlaEscalationInput])
    nested = _payload({"request_id": 1, "sla_due_at": "d", "carry": {"escalations": [5]}})
    with pytest.raises(TypeError, match="field carry"):
        OURS.from_payloads([nested], [SlaEscalationInput])


def test_field_types_are_read_once_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Local:
        items: list[SlaNote]
        when: str = ""

    calls: list[type] = []
    real = typing.get_type_hints

    def counting(obj: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(obj)
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(converter.typing, "get_type_hints", counting)
    payload = _payload({"items": [{"text": "t", "actor": "a", "at": "x"}], "when": "now"})
    for _ in range(5):
        decoded = OURS.from_payloads([payload], [Local])[0]
    assert decoded == Local(items=[SlaNote(text="t", actor="a", at="x")], when="now")
    assert calls.count(Local) == 1
    assert calls.count(SlaNote) <= 1  # at most once, whichever test decoded it first
    # A class that goes away (a sandboxed workflow's re-imported copy) leaves the cache.
    calls.clear()
    del Local, decoded
    gc.collect()
    assert all(cls.__name__ != "Local" for cls in converter._plans)
