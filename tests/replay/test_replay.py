"""Replay every saved history against today's workflow code (DESIGN.md house rule 8).

A failure here means a workflow change would break runs already in flight: put the change
behind ``workflow.patched("...")`` instead of re-recording (see README.md in this folder).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import workflow

# The altered workflow below runs in the replayer's sandbox, which re-imports this module:
# pass the third-party and opsflow imports through rather than re-importing them there.
with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from opsflow.catalog import ALL_WORKFLOWS
    from opsflow.shared.dev_role_elevation import DevRoleElevationInput
    from tests.replay.record_histories import HISTORIES, SCENARIOS, history_path, workflow_id_of

SAVED = sorted(HISTORIES.glob("*.json"))


def _workflow_type(path: Path) -> str:
    """The workflow type a saved history belongs to, from its first (started) event."""
    first = json.loads(path.read_text(encoding="utf-8"))["events"][0]
    return str(first["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(workflow_id_of(path), path.read_text(encoding="utf-8"))


def _defined_name(cls: type[Any]) -> str:
    defn = workflow._Definition.must_from_class(cls)
    assert defn.name is not None, cls
    return defn.name


@pytest.fixture(scope="module")
def replayer() -> Replayer:
    return Replayer(workflows=ALL_WORKFLOWS)


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
async def test_saved_history_replays(replayer: Replayer, path: Path) -> None:
    result = await replayer.replay_workflow(_load(path))
    assert result.replay_failure is None


def test_every_workflow_has_a_saved_history() -> None:
    # A new runbook without a recorded history fails here: add scenarios to record_histories.
    recorded = {_workflow_type(p) for p in SAVED}
    registered = {_defined_name(cls) for cls in ALL_WORKFLOWS}
    assert registered <= recorded, f"no saved history for {sorted(registered - recorded)}"
    assert recorded <= registered, f"histories of unknown workflows {sorted(recorded - registered)}"


def test_every_scenario_is_saved_and_nothing_else() -> None:
    expected = {history_path(s.workflow_id) for s in SCENARIOS}
    assert expected <= set(SAVED), f"not recorded: {sorted(p.name for p in expected - set(SAVED))}"
    # Besides the scenarios, only kept copies of histories from before a patched change
    # (``<scenario>.pre-<change-id>.json``, see README.md) may be saved.
    scenario_stems = {p.stem for p in expected}
    strays = [
        p.name
        for p in SAVED
        if p not in expected and p.stem.split(".pre-", 1)[0] not in scenario_stems
    ]
    assert not strays, f"histories of no scenario: {strays}"


def test_histories_carry_the_search_attribute_upserts() -> None:
    # The histories must exercise set_state(): recorded without OpsRunbook they would not.
    for path in SAVED:
        events = json.loads(path.read_text(encoding="utf-8"))["events"]
        kinds = [e["eventType"] for e in events]
        assert "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES" in kinds, path.name


@workflow.defn(name="dev-role-elevation")
class ReorderedDevRoleElevation:
    """A careless edit of dev-role-elevation: mails the admins before granting."""

    @workflow.run
    async def run(self, inp: DevRoleElevationInput) -> None:
        timeout = timedelta(seconds=30)
        await workflow.execute_activity("platform.record_run", start_to_close_timeout=timeout)
        await workflow.execute_activity("dev_role.notify_admins", start_to_close_timeout=timeout)
        await workflow.execute_activity("dev_role.grant", start_to_close_timeout=timeout)


async def test_replayer_detects_a_reordered_workflow() -> None:
    # Proof the replay tests can fail: the same history against a reordered workflow.
    path = history_path("dev-role-elevation:replay-timer")
    with pytest.raises(workflow.NondeterminismError, match=r"scheduled event 'dev_role\.grant'"):
        await Replayer(workflows=[ReorderedDevRoleElevation]).replay_workflow(_load(path))
