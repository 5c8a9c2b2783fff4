"""``RunbookSpec.await_result``: the API waits for short runs and maps business refusals to 4xx."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from opsflow.shared.errors import CONFLICT, INVALID, NOT_FOUND
from opsflow.shared.roles import Role
from tests.unit.api_fakes import CATALOG, LEVEL, FakeHandle, Harness, make_harness

SYNC = dataclasses.replace(LEVEL, name="level-sync", await_result=timedelta(seconds=0.3))


@pytest.fixture
def h() -> Harness:
    return make_harness({**CATALOG, SYNC.name: SYNC})


def _outcome(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> None:
    async def result(self: FakeHandle, **_: Any) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome == "slow":
            await asyncio.sleep(5)
        return {"done": True}

    monkeypatch.setattr(FakeHandle, "result", result)


def _start(h: Harness) -> Any:
    return h.http.post(
        "/runbooks/level-sync/runs", headers=h.auth(Role.OPERATOR), json={"name": "a"}
    )


@pytest.mark.parametrize(("kind", "code"), [(NOT_FOUND, 404), (CONFLICT, 409), (INVALID, 422)])
def test_business_refusal_is_its_4xx_with_the_message(
    h: Harness, monkeypatch: pytest.MonkeyPatch, kind: str, code: int
) -> None:
    _outcome(
        monkeypatch,
        WorkflowFailureError(cause=ApplicationError("request 7 is closed", type=kind)),
    )
    r = _start(h)
    assert r.status_code == code, r.text
    assert r.json()["detail"] == "level-sync refused: request 7 is closed"
    refused = [e for e in h.store.events if e.action == "run.refused"]
    assert len(refused) == 1 and refused[0].outcome == "rejected"
    assert refused[0].details["error"] == "request 7 is closed"


def test_completed_run_answers_201_completed(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _outcome(monkeypatch, None)
    r = _start(h)
    assert r.status_code == 201 and r.json()["status"] == "COMPLETED"


def test_slow_run_answers_201_running(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _outcome(monkeypatch, "slow")
    r = _start(h)
    assert r.status_code == 201 and r.json()["status"] == "RUNNING"


def test_other_failures_are_not_refusals(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    _outcome(monkeypatch, WorkflowFailureError(cause=ApplicationError("db down", type="Boom")))
    r = _start(h)
    assert r.status_code == 201 and r.json()["status"] == "FAILED"
    assert not [e for e in h.store.events if e.action == "run.refused"]


def test_runbooks_without_await_result_do_not_wait(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    _outcome(monkeypatch, WorkflowFailureError(cause=ApplicationError("x", type=CONFLICT)))
    r = h.http.post("/runbooks/level/runs", headers=h.auth(Role.OPERATOR), json={"name": "b"})
    assert r.status_code == 201 and r.json()["status"] == "RUNNING"
