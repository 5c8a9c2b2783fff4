"""Fakes for the API's unit tests: platform store, Temporal client, S3, and an app wired to them.

The fakes keep what the API wrote (audit events, runs, idempotency records, started workflows,
signals) so tests can assert that refused calls changed nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import TypedSearchAttributes
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from opsflow.adapters.audit import AuditRecord
from opsflow.adapters.idempotency import IdempotencyRecord
from opsflow.adapters.tokens import TokenInfo
from opsflow.api import deps
from opsflow.api.app import create_app
from opsflow.api.deps import Lazy, Services
from opsflow.catalog import RUNBOOKS, ActionSpec, RunbookSpec
from opsflow.config import Settings
from opsflow.logs import configure_logging
from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.roles import Role, roles

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


# --- a runbook with an update and a query taking an argument, beside the real catalog ------


@dataclass
class LevelInput:
    """Input of the test runbook."""

    name: str
    level: int = field(default=1, metadata={"ge": 1, "le": 10})


@dataclass
class SetLevel:
    """Update argument; ``actor`` is filled by the API."""

    level: int
    actor: str = ""


class LevelWorkflow:
    """Stands in for a workflow class (the fake client only needs ``run``)."""

    async def run(self, inp: LevelInput) -> dict[str, Any]:
        return {"level": inp.level}


LEVEL = RunbookSpec(
    name="level",
    title="Level",
    description="Test runbook with an update.",
    trigger=("api",),
    workflow=LevelWorkflow,
    input=LevelInput,
    output=dict,
    workflow_id=lambda inp: f"level:{inp.name}",
    start=roles(Role.OPERATOR, Role.ADMIN),
    updates={"set-level": ActionSpec(roles(Role.ADMIN), arg=SetLevel)},
    queries={"progress": ActionSpec(roles(Role.OPERATOR, Role.ADMIN))},
    cancel=roles(Role.ADMIN),
)

CATALOG: dict[str, RunbookSpec] = {**RUNBOOKS, "level": LEVEL}


# --- platform store ------------------------------------------------------------------------


class FakeStore:
    """In-memory stand-in for :class:`opsflow.api.deps.PlatformStore`."""

    def __init__(self) -> None:
        self.tokens: dict[str, TokenInfo] = {}
        self.events: list[AuditRecord] = []
        self.runs: list[tuple[RunRecord, datetime | None]] = []
        self.idem: dict[tuple[str, str], IdempotencyRecord] = {}
        self.health: tuple[dict[str, Any] | None, list[dict[str, Any]]] = (None, [])
        self.settings: dict[str, Any] = {}
        self.down: set[str] = set()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._ids = itertools.count(1)

    def add_token(self, role: Role, name: str | None = None) -> str:
        name = name or f"{role.value}-1"
        token = f"opsf_test_{name}"
        self.tokens[token] = TokenInfo(
            id=len(self.tokens) + 1, name=name, role=role, created_at=NOW, created_by="test",
            revoked_at=None, last_used_at=None,
        )  # fmt: skip
        return token

    def _check(self, db: str) -> None:
        from opsflow.api.errors import ServiceUnavailable

        if db in self.down:
            raise ServiceUnavailable(db)

    async def authenticate(self, token: str) -> TokenInfo | None:
        self._check(deps.OPSFLOW_DB)
        info = self.tokens.get(token)
        return info if info and info.revoked_at is None else None

    async def record_event(self, event: AuditEventIn) -> AuditRecord:
        self._check(deps.OPSFLOW_DB)
        n = next(self._ids)
        rec = AuditRecord(
            id=n, occurred_at=NOW, actor=event.actor, action=event.action, target=event.target,
            outcome=event.outcome, details=dict(event.details), workflow_id=event.workflow_id,
            run_id=event.run_id, prev_hash=f"{n - 1:064x}", hash=f"{n:064x}",
        )  # fmt: skip
        self.events.append(rec)
        return rec

    async def query_events(self, **filters: Any) -> list[AuditRecord]:
        self._check(deps.OPSFLOW_DB)
        self.calls.append(("query_events", filters))
        out = [
            e for e in self.events
            if (filters.get("actor") is None or e.actor == filters["actor"])
            and (filters.get("action") is None or e.action == filters["action"])
            and (filters.get("after_id") is None or e.id > filters["after_id"])
        ]  # fmt: skip
        return out[: filters.get("limit", 100)]

    async def upsert_run(self, rec: RunRecord, *, started_at: datetime | None = None) -> None:
        self._check(deps.OPSFLOW_DB)
        self.runs.append((rec, started_at))

    async def get_run(self, workflow_id: str) -> dict[str, Any] | None:
        self._check(deps.OPSFLOW_DB)
        for rec, _ in reversed(self.runs):
            if rec.workflow_id == workflow_id:
                return dataclasses.asdict(rec)
        return None

    async def list_runs(self, **filters: Any) -> tuple[list[dict[str, Any]], int]:
        self._check(deps.OPSFLOW_DB)
        self.calls.append(("list_runs", filters))
        rows = [
            {**dataclasses.asdict(rec), "started_at": started or NOW}
            for rec, started in self.runs
            if filters.get("runbook") is None or rec.runbook == filters["runbook"]
        ]
        start = filters.get("offset", 0)
        return rows[start : start + filters.get("limit", 50)], len(rows)

    async def idempotency_lookup(self, actor: str, key: str) -> IdempotencyRecord | None:
        self._check(deps.OPSFLOW_DB)
        return self.idem.get((actor, key))

    async def idempotency_remember(self, rec: IdempotencyRecord) -> IdempotencyRecord:
        self._check(deps.OPSFLOW_DB)
        return self.idem.setdefault((rec.actor, rec.key), rec)

    async def health_report(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        self._check(deps.OPSFLOW_DB)
        return self.health

    async def app_setting(self, key: str) -> Any:
        self._check(deps.APP_DB)
        return self.settings.get(key)

    async def ping(self, which: str) -> float:
        self._check(deps.OPSFLOW_DB if which == "opsflow" else deps.APP_DB)
        return 1.5


# --- Temporal -----------------------------------------------------------------------------


@dataclass
class FakeRun:
    """One workflow run the fake server knows."""

    id: str
    run_id: str
    workflow_type: str
    inp: Any
    search_attributes: TypedSearchAttributes
    memo: dict[str, Any]
    status: WorkflowExecutionStatus = WorkflowExecutionStatus.RUNNING
    result: Any = None
    failure: str | None = None
    signals: list[tuple[str, Any]] = field(default_factory=list)
    updates: list[tuple[str, Any]] = field(default_factory=list)
    cancel_requested: bool = False
    start_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: Any = field(default_factory=lambda: {"step": "waiting", "done": 1, "total": 3})


@dataclass
class FakeDescription:
    """Enough of ``WorkflowExecutionDescription`` for the API."""

    run: FakeRun

    @property
    def id(self) -> str:
        return self.run.id

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def status(self) -> WorkflowExecutionStatus:
        return self.run.status

    @property
    def workflow_type(self) -> str:
        return self.run.workflow_type

    @property
    def typed_search_attributes(self) -> TypedSearchAttributes:
        return self.run.search_attributes

    @property
    def start_time(self) -> datetime:
        return NOW

    @property
    def close_time(self) -> datetime | None:
        return None if self.run.status == WorkflowExecutionStatus.RUNNING else NOW

    async def memo(self) -> Mapping[str, Any]:
        return self.run.memo


class _Event:
    def __init__(self, inp: Any) -> None:
        self.workflow_execution_started_event_attributes = _Attrs(inp)


class _Attrs:
    def __init__(self, inp: Any) -> None:
        self.input = _Payloads(inp)


class _Payloads:
    def __init__(self, inp: Any) -> None:
        self.payloads = [inp]


class FakeConverter:
    """Stands in for the data converter: "payloads" are already plain values."""

    async def decode(self, payloads: list[Any]) -> list[Any]:
        return [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in payloads]  # type: ignore[arg-type]


class FakeHandle:
    """A workflow handle over :class:`FakeRun`."""

    def __init__(self, client: FakeClient, workflow_id: str, run_id: str | None) -> None:
        self.client = client
        self.id = workflow_id
        self.run_id = run_id

    def _run(self) -> FakeRun:
        runs = self.client.runs.get(self.id)
        if not runs:
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")
        if self.run_id is None:
            return runs[-1]
        for run in runs:
            if run.run_id == self.run_id:
                return run
        raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")

    async def describe(self) -> FakeDescription:
        self.client.check()
        return FakeDescription(self._run())

    async def signal(self, name: str, arg: Any = None) -> None:
        run = self._run()
        if run.status != WorkflowExecutionStatus.RUNNING:
            raise RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")
        run.signals.append((name, arg))

    async def execute_update(self, name: str, arg: Any = None) -> Any:
        run = self._run()
        if isinstance(arg, SetLevel) and arg.level > 5:
            raise WorkflowUpdateFailedError(ApplicationError("level above 5 needs a ticket"))
        run.updates.append((name, arg))
        return {"level": getattr(arg, "level", None), "by": getattr(arg, "actor", None)}

    async def query(self, name: str, *args: Any, rpc_timeout: Any = None) -> Any:
        run = self._run()
        if name == "progress":
            if isinstance(run.progress, Exception):
                raise run.progress
            return run.progress
        if name == "status":
            return {"state": "active", "environment": "production"}
        raise WorkflowQueryFailedError(f"unknown query {name}")

    async def cancel(self) -> None:
        run = self._run()
        run.cancel_requested = True

    async def result(self, *, follow_runs: bool = True, rpc_timeout: Any = None) -> Any:
        run = self._run()
        if run.failure is not None:
            raise WorkflowFailureError(cause=ApplicationError(run.failure))
        return run.result

    async def fetch_history_events(self, **_: Any) -> AsyncIterator[_Event]:
        yield _Event(self._run().inp)


class FakeClient:
    """A Temporal client that keeps runs in memory."""

    def __init__(self) -> None:
        self.runs: dict[str, list[FakeRun]] = {}
        self.data_converter = FakeConverter()
        self.down = False
        self._n = itertools.count(1)

    def check(self) -> None:
        if self.down:
            raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    async def start_workflow(self, run_fn: Any, inp: Any, *, id: str, **kwargs: Any) -> FakeHandle:
        self.check()
        runs = self.runs.setdefault(id, [])
        if runs and runs[-1].status == WorkflowExecutionStatus.RUNNING:
            raise WorkflowAlreadyStartedError(id, "Wf", run_id=runs[-1].run_id)
        run = FakeRun(
            id=id, run_id=f"run-{next(self._n)}", workflow_type=run_fn.__qualname__.split(".")[0],
            inp=inp, search_attributes=kwargs["search_attributes"], memo=dict(kwargs["memo"]),
            start_kwargs=kwargs,
        )  # fmt: skip
        runs.append(run)
        handle = FakeHandle(self, id, run.run_id)
        handle.result_run_id = run.run_id  # type: ignore[attr-defined]
        handle.first_execution_run_id = run.run_id  # type: ignore[attr-defined]
        return handle

    def get_workflow_handle(self, workflow_id: str, *, run_id: str | None = None) -> FakeHandle:
        return FakeHandle(self, workflow_id, run_id)

    @property
    def service_client(self) -> FakeClient:
        return self

    async def check_health(self) -> bool:
        self.check()
        return True

    def started(self) -> list[FakeRun]:
        return [r for runs in self.runs.values() for r in runs]


class FakeS3:
    """``head_bucket`` only."""

    def __init__(self) -> None:
        self.down = False

    def head_bucket(self, Bucket: str) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("connection refused")
        return {}


# --- the app --------------------------------------------------------------------------------


@dataclass
class Harness:
    """An app wired to fakes, a test client, and a token per role."""

    app: FastAPI
    http: TestClient
    store: FakeStore
    temporal: FakeClient
    s3: FakeS3
    settings: Settings
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def changes(self) -> tuple[int, int, int, int]:
        """Everything a refused call must leave unchanged."""
        signals = sum(
            len(r.signals) + len(r.updates) + r.cancel_requested for r in self.temporal.started()
        )
        return len(self.store.events), len(self.store.runs), len(self.temporal.started()), signals


def make_harness(catalog: Mapping[str, RunbookSpec] | None = None, **settings: Any) -> Harness:
    """Build the app with every dependency replaced by a fake."""
    cfg = Settings(temporal_ui_url="http://ui.test", opsflow_env="production", **settings)
    # The API's own JSON logging (structlog's default renderer formats tracebacks slowly).
    configure_logging(cfg, "api")
    app = create_app(cfg)
    store = FakeStore()
    temporal = FakeClient()
    s3 = FakeS3()

    async def temporal_factory() -> Any:
        temporal.check()
        return temporal

    async def no_pool() -> Any:
        raise AssertionError("unit tests never open a pool")

    services = Services(
        settings=cfg,
        temporal=Lazy("temporal", temporal_factory),
        opsflow_pool=Lazy(deps.OPSFLOW_DB, no_pool),
        app_pool=Lazy(deps.APP_DB, no_pool),
        s3=s3,  # type: ignore[arg-type]
        metrics=app.state.metrics,
    )
    app.dependency_overrides[deps.get_services] = lambda: services
    app.dependency_overrides[deps.get_store] = lambda: store
    app.dependency_overrides[deps.get_temporal_client] = temporal_factory
    app.dependency_overrides[deps.get_catalog] = lambda: catalog if catalog is not None else CATALOG
    app.dependency_overrides[deps.utcnow] = lambda: NOW
    tokens = {role: store.add_token(role) for role in Role}
    http = TestClient(app, raise_server_exceptions=False)
    return Harness(app, http, store, temporal, s3, cfg, tokens)
