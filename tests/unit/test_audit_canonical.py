"""canonical_bytes: the exact bytes a row's hash covers must never drift."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from opsflow.adapters.audit import (
    GENESIS_HASH,
    _fragments,
    _normalise_details,
    _utc_iso,
    canonical_bytes,
    compute_hash,
)
from opsflow.shared.common import AuditEventIn

ROW: dict[str, Any] = {
    "id": 7,
    "occurred_at": datetime(2026, 11, 22, 1, 2, 3, 4, tzinfo=UTC),
    "actor": "token:alice",
    "action": "run.start",
    "target": "runbook:health-check",
    "outcome": "success",
    "details": {"b": [1, 2.5, None], "a": {"z": True, "y": "é"}},
    "workflow_id": "health-check:manual",
    "run_id": None,
    "prev_hash": GENESIS_HASH,
}

# Written out once; any change to the encoding changes these and breaks every stored chain.
EXPECTED = (
    '{"action":"run.start","actor":"token:alice","details":{"a":{"y":"é","z":true},'
    '"b":[1,2.5,null]},"id":7,"occurred_at":"2026-11-22T01:02:03.000004Z",'
    '"outcome":"success","prev_hash":"' + "0" * 64 + '","run_id":null,'
    '"target":"runbook:health-check","workflow_id":"health-check:manual"}'
).encode()


def test_exact_bytes_and_hash() -> None:
    assert canonical_bytes(**ROW) == EXPECTED
    assert compute_hash(**ROW) == hashlib.sha256(EXPECTED).hexdigest()
    assert compute_hash(**ROW) == (
        "129c321eadf1a4ad8e7a68d444de41c5218687cf56e57fef353b587e7ace7499"
    )


def test_same_instant_in_another_zone_gives_same_bytes() -> None:
    plus2 = timezone(timedelta(hours=2))
    other = dict(ROW, occurred_at=datetime(2026, 11, 22, 3, 2, 3, 4, tzinfo=plus2))
    assert canonical_bytes(**other) == EXPECTED


def test_dict_order_does_not_matter() -> None:
    reordered = dict(ROW, details={"a": {"y": "é", "z": True}, "b": [1, 2.5, None]})
    assert canonical_bytes(**reordered) == EXPECTED


def test_every_field_is_covered() -> None:
    base = compute_hash(**ROW)
    changes = {
        "id": 8,
        "occurred_at": ROW["occurred_at"] + timedelta(microseconds=1),
        "actor": "token:mallory",
        "action": "run.cancel",
        "target": "runbook:other",
        "outcome": "denied",
        "details": {"b": [1, 2.5, None], "a": {"z": False, "y": "é"}},
        "workflow_id": "x",
        "run_id": "r",
        "prev_hash": "1" * 64,
    }
    for name, value in changes.items():
        assert compute_hash(**dict(ROW, **{name: value})) != base, name


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        canonical_bytes(**dict(ROW, occurred_at=datetime(2026, 11, 22, 1, 2, 3)))


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical_bytes(**dict(ROW, details={"x": float("nan")}))


def test_details_normalised_like_a_jsonb_round_trip() -> None:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    raw: dict[Any, Any] = {"t": (1, 2), "when": when, 3: "k", "big": 1e16, "small": 1e-5}
    out = _normalise_details(raw)
    # jsonb returns numeric 1e16 as an integer and keeps 1e-5 a fraction.
    assert out == {"t": [1, 2], "when": str(when), "3": "k", "big": 10**16, "small": 1e-5}
    assert isinstance(out["big"], int)
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(ValueError):
        _normalise_details({"x": "a\x00b"})


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"workflow_id": None, "run_id": "r-1", "outcome": "denied"},
        {"actor": 'quote " and \\ backslash', "target": "line\nbreak\ttab"},
        {"details": {}, "action": "ünïcode ✓ 名前", "target": "emoji 🚀"},
        {"details": {"nested": {"z": [1, {"b": 2, "a": 1}], "a": None}, "big": 10**20}},
    ],
)
def test_fragments_join_to_the_canonical_bytes(changes: dict[str, Any]) -> None:
    """What the database function hashes is exactly what verify_chain recomputes.

    ``opsflow_audit_append`` joins the fragments with the id, the time (to_char, microseconds,
    UTC) and the previous hash; the join must equal canonical_bytes of the stored row.
    """
    row = dict(ROW, **changes)
    event = AuditEventIn(
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        outcome=row["outcome"],
        details=row["details"],
        workflow_id=row["workflow_id"],
        run_id=row["run_id"],
    )
    head, tail, end = _fragments(event, row["details"])
    joined = (
        head + str(row["id"]) + ',"occurred_at":"' + _utc_iso(row["occurred_at"]) + tail
        + row["prev_hash"] + end
    )  # fmt: skip
    assert joined.encode() == canonical_bytes(**row)
