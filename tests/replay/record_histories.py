"""Record the workflow histories that ``tests/replay/test_replay.py`` replays.

Run from the repository root::

    .venv/bin/python -m tests.replay.record_histories

Each scenario starts its workflow the way the API does (catalog workflow id, search attributes
``OpsRunbook``/``OpsActor``/``OpsTenant``/``OpsState``, memo ``actor``/``runbook``, static
summary and details) against a real Temporal server, with the activities mocked by name, and
saves the finished run's history to ``tests/replay/histories/<workflow id>.json`` (``:`` written
as ``__``). Most scenarios run on the local dev server (``temporal server start-dev``); the
timer expiry runs on the time-skipping test server, with opsflow's search attributes registered
on it, so a one-hour window takes milliseconds and the history still carries every upsert.

Re-record only when a workflow change is intentionally incompatible and guarded by
``workflow.patched(...)`` (see README.md next to this file), never to make a failing replay pass.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from opsflow import binaries
from opsflow.api.runbook_io import input_markdown, to_json
from opsflow.catalog import ALL_WORKFLOWS, RunbookSpec, get_runbook
from opsflow.shared import ids
from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.dev_role_elevation import (
    AdminNotice,
    DeveloperAction,
    DeveloperActions,
    DeveloperActionsQuery,
    DevRoleElevationInput,
    DevRoleElevationResult,
    DevRoleStatus,
    DisableSignal,
    GrantRequest,
    RevokeOutcome,
    RevokeRequest,
)
from opsflow.shared.health_check import (
    Alert,
    AlertTransition,
    AppHealth,
    DatabaseHealth,
    HealthCheckInput,
    HealthCheckRecord,
    HourFigures,
    OpenAlerts,
    StorageHealth,
    Thresholds,
)
from tests.replay.audit_export_scenarios import (
    AUDIT_EXPORT_SCENARIOS,
    audit_export_activities,
)
from tests.replay.sla_scenarios import SLA_SCENARIOS, sla_activities

HISTORIES = Path(__file__).resolve().parent / "histories"
SEARCH_ATTRIBUTE_KEYS: list[SearchAttributeKey[Any]] = [
    SearchAttributeKey.for_datetime(n) if kind == "Datetime" else SearchAttributeKey.for_keyword(n)
    for n, kind in ids.SEARCH_ATTRIBUTES.items()
]


def history_path(workflow_id: str) -> Path:
    """Return the file a workflow id's history is saved in (``:`` is written as ``__``)."""
    return HISTORIES / f"{workflow_id.replace(':', '__')}.json"


def workflow_id_of(path: Path) -> str:
    """Return the workflow id a saved history file was recorded under."""
    return path.stem.replace("__", ":", 1)


# ---------------------------------------------------------------------------------------------
# Activities mocked by name: small in-memory worlds whose state outlives a run, so successive
# scenarios see the effects of earlier ones (an alert raised by one check is open in the next).


@dataclass
class DevRoleWorld:
    """Stand-in for ``app.settings``, admin mail and the activity log."""

    allow: bool = False
    fail_notify_granted: bool = False

    def activities(self) -> list[Callable[..., Any]]:
        """Return the ``dev_role.*`` activities."""

        @activity.defn(name="dev_role.grant")
        async def grant(req: GrantRequest) -> None:
            self.allow = True

        @activity.defn(name="dev_role.revoke")
        async def revoke(req: RevokeRequest) -> RevokeOutcome:
            changed, self.allow = self.allow, False
            return RevokeOutcome(changed=changed)

        @activity.defn(name="dev_role.notify_admins")
        async def notify_admins(notice: AdminNotice) -> int:
            if self.fail_notify_granted and notice.idempotency_key.endswith("/granted"):
                raise ApplicationError("smtp relay refused the message", non_retryable=True)
            return 2

        @activity.defn(name="dev_role.developer_actions")
        async def developer_actions(q: DeveloperActionsQuery) -> DeveloperActions:
            done = DeveloperAction(q.since, "dev1", "pipeline.update", "pipeline:7")
            return DeveloperActions(actions=[done], total=1)

        @activity.defn(name="dev_role.record_review")
        async def record_review(result: DevRoleElevationResult) -> None:
            pass

        return [grant, revoke, notify_admins, developer_actions, record_review]


@dataclass
class HealthWorld:
    """What the probes observe, and the alert state that outlives each check."""

    app_errors: int = 0
    open: dict[str, Alert] = field(default_factory=dict)

    def activities(self) -> list[Callable[..., Any]]:
        """Return the ``health.*`` activities."""

        @activity.defn(name="health.check_app")
        async def check_app() -> AppHealth:
            return AppHealth(url="http://app/api/health", ok=True, status_code=200, latency_ms=5.0)

        @activity.defn(name="health.check_databases")
        async def check_databases() -> list[DatabaseHealth]:
            return [
                DatabaseHealth(
                    name="app", reachable=True, connections=3, max_connections=100, usage_pct=3.0
                )
            ]

        @activity.defn(name="health.check_storage")
        async def check_storage() -> StorageHealth:
            return StorageHealth()

        @activity.defn(name="health.expire_dev_grants")
        async def expire_dev_grants() -> list[str]:
            return []

        @activity.defn(name="health.hour_figures")
        async def hour_figures(latency_ms: float) -> HourFigures:
            return HourFigures(app_errors=self.app_errors)

        @activity.defn(name="health.thresholds")
        async def thresholds() -> Thresholds:
            return Thresholds()

        @activity.defn(name="health.open_alerts")
        async def open_alerts() -> OpenAlerts:
            return OpenAlerts(alerts=list(self.open.values()))

        @activity.defn(name="health.transition_alert")
        async def transition_alert(t: AlertTransition) -> None:
            if t.kind == "raised":
                self.open[t.alert.key] = t.alert
            else:
                self.open.pop(t.alert.key, None)

        @activity.defn(name="health.record")
        async def record(r: HealthCheckRecord) -> None:
            pass

        return [
            check_app,
            check_databases,
            check_storage,
            expire_dev_grants,
            hour_figures,
            thresholds,
            open_alerts,
            transition_alert,
            record,
        ]


@activity.defn(name="platform.record_run")
async def record_run(r: RunRecord) -> None:
    """Mock of the runs read-model upsert."""


@activity.defn(name="platform.audit")
async def audit(e: AuditEventIn) -> None:
    """Mock of the audit append."""


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Ctx:
    """What a scenario drives: a client, the worker's task queue and the mocked worlds."""

    client: Client
    task_queue: str
    dev_role: DevRoleWorld
    health: HealthWorld


async def start(
    ctx: Ctx, runbook: str, inp: Any, *, actor: str, workflow_id: str | None = None
) -> WorkflowHandle[Any, Any]:
    """Start a runbook as ``opsflow.api.actions.start_run`` does (same SAs, memo, summary)."""
    spec: RunbookSpec | None = get_runbook(runbook)
    assert spec is not None, runbook
    return await ctx.client.start_workflow(
        spec.workflow.run,
        inp,
        id=workflow_id or spec.workflow_id(inp),
        task_queue=ctx.task_queue,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_RUNBOOK), spec.name),
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_ACTOR), actor),
                SearchAttributePair(
                    SearchAttributeKey.for_keyword(ids.SA_TENANT), spec.tenant(inp)
                ),
                SearchAttributePair(SearchAttributeKey.for_keyword(ids.SA_STATE), "started"),
            ]
        ),
        memo={ids.MEMO_ACTOR: actor, ids.MEMO_RUNBOOK: spec.name},
        static_summary=spec.summary(inp)[:400],
        static_details=input_markdown(spec.name, actor, to_json(spec.input, inp)),
        execution_timeout=spec.execution_timeout,
    )


ADMIN = "token:alice(admin)"


async def wait_active(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the grant is on (so the signal or cancel lands in the waiting window)."""
    for _ in range(200):
        status = await handle.query("status", result_type=DevRoleStatus)
        if status.state == "active":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{handle.id} never became active")


async def settle(handle: WorkflowHandle[Any, Any], *, fails: bool = False) -> None:
    """Wait for the run to end, checking it ended the way the scenario intends."""
    try:
        await handle.result()
    except WorkflowFailureError:
        if not fails:
            raise
        return
    if fails:
        raise RuntimeError(f"{handle.id} was expected to fail")


async def dev_role_timer(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """The window ends by its durable timer (1 h, time-skipped)."""
    inp = DevRoleElevationInput(
        reason="INC-2211 hot-fix the connector sync", hours=1, environment="replay-timer"
    )
    handle = await start(ctx, "dev-role-elevation", inp, actor=ADMIN)
    await settle(handle)
    return handle


async def dev_role_disable(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """An admin ends the window early with the ``disable`` signal."""
    inp = DevRoleElevationInput(reason="INC-2212 data fix", hours=24, environment="replay-disable")
    handle = await start(ctx, "dev-role-elevation", inp, actor=ADMIN)
    await wait_active(handle)
    await handle.signal("disable", DisableSignal(actor="token:bob(admin)", reason="fix done"))
    await settle(handle)
    return handle


async def dev_role_cancel(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """The run is cancelled while the grant is active; it still revokes."""
    inp = DevRoleElevationInput(reason="INC-2213 config", hours=24, environment="replay-cancel")
    handle = await start(ctx, "dev-role-elevation", inp, actor=ADMIN)
    await wait_active(handle)
    await handle.cancel()
    await settle(handle, fails=True)
    return handle


async def dev_role_failure(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """The "granted" mail fails for good after the grant; the grant is still revoked."""
    ctx.dev_role.fail_notify_granted = True
    try:
        inp = DevRoleElevationInput(reason="INC-2214 mail", hours=24, environment="replay-failure")
        handle = await start(ctx, "dev-role-elevation", inp, actor=ADMIN)
        await settle(handle, fails=True)
    finally:
        ctx.dev_role.fail_notify_granted = False
    return handle


async def _health(ctx: Ctx, key: str, app_errors: int) -> WorkflowHandle[Any, Any]:
    ctx.health.app_errors = app_errors
    handle = await start(
        ctx,
        "health-check",
        HealthCheckInput(),
        actor=ids.schedule_actor("health-check"),
        workflow_id=ids.health_check_workflow_id(key),
    )
    await settle(handle)
    return handle


async def health_healthy(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """Nothing fires, nothing is open: status ok."""
    return await _health(ctx, "replay-healthy", app_errors=0)


async def health_alert_raised(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """Application errors over the threshold: one alert raised."""
    return await _health(ctx, "replay-alert-raised", app_errors=25)


async def health_alert_resolved(ctx: Ctx) -> WorkflowHandle[Any, Any]:
    """Errors back to normal with the alert still open: one alert resolved."""
    return await _health(ctx, "replay-alert-resolved", app_errors=0)


@dataclass(frozen=True)
class Scenario:
    """One saved history: the workflow id it is recorded under and how it is produced."""

    workflow_id: str
    run: Callable[[Ctx], Awaitable[WorkflowHandle[Any, Any]]]
    time_skipping: bool = False


SCENARIOS: list[Scenario] = [
    Scenario("dev-role-elevation:replay-timer", dev_role_timer, time_skipping=True),
    Scenario("dev-role-elevation:replay-disable", dev_role_disable),
    Scenario("dev-role-elevation:replay-cancel", dev_role_cancel),
    Scenario("dev-role-elevation:replay-failure", dev_role_failure),
    # In this order: the second check raises the alert the third one resolves.
    Scenario("health-check:replay-healthy", health_healthy),
    Scenario("health-check:replay-alert-raised", health_alert_raised),
    Scenario("health-check:replay-alert-resolved", health_alert_resolved),
    *(Scenario(wid, run) for wid, run in AUDIT_EXPORT_SCENARIOS),
    *(Scenario(sc.workflow_id, sc.run, sc.time_skipping) for sc in SLA_SCENARIOS),
]


async def _record(env: WorkflowEnvironment, scenarios: list[Scenario]) -> list[Path]:
    ctx = Ctx(env.client, f"replay-{uuid.uuid4()}", DevRoleWorld(), HealthWorld())
    activities: list[Callable[..., Any]] = [
        *ctx.dev_role.activities(),
        *ctx.health.activities(),
        *audit_export_activities(),
        *sla_activities(),
        record_run,
        audit,
    ]
    written: list[Path] = []
    async with Worker(
        env.client, task_queue=ctx.task_queue, workflows=ALL_WORKFLOWS, activities=activities
    ):
        for scenario in scenarios:
            handle = await scenario.run(ctx)
            if handle.id != scenario.workflow_id:
                raise RuntimeError(
                    f"scenario recorded {handle.id}, expected {scenario.workflow_id}"
                )
            history = await handle.fetch_history()
            path = history_path(handle.id)
            path.write_text(history.to_json() + "\n", encoding="utf-8")
            written.append(path)
            print(f"saved {path.relative_to(Path.cwd())} ({len(history.events)} events)")
    return written


async def record_all() -> None:
    """Run every scenario and save its history (dev server, then time-skipping server)."""
    HISTORIES.mkdir(parents=True, exist_ok=True)
    dev = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binaries.find("temporal"),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
    )
    try:
        await _record(dev, [s for s in SCENARIOS if not s.time_skipping])
    finally:
        await dev.shutdown()

    ts = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binaries.find("temporal-test-server")
    )
    try:
        # The test server accepts custom search attributes once registered, so set_state()
        # upserts OpsState here exactly as it does on the dev server.
        await ts.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=ts.client.namespace,
                search_attributes={
                    name: IndexedValueType.Value(f"INDEXED_VALUE_TYPE_{kind.upper()}")
                    for name, kind in ids.SEARCH_ATTRIBUTES.items()
                },
            )
        )
        await _record(ts, [s for s in SCENARIOS if s.time_skipping])
    finally:
        await ts.shutdown()


def main() -> None:
    """Record all histories; exit with ``os._exit`` (sdk-python issue 300)."""
    status = 0
    try:
        asyncio.run(record_all())
    except BaseException as exc:  # report, then still leave through os._exit
        print(f"recording failed: {exc!r}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
