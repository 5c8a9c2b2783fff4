"""What the routes do with Temporal: start, describe, signal, update, query, cancel.

Runbook-agnostic: everything comes from the catalog's ``RunbookSpec``. Each change is recorded
as an audit event once Temporal has accepted it; refusals change nothing and are only logged.
Shared by the generic routes and ``PUT /settings/dev-role-production``, so both take exactly the
same path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import Depends, HTTPException
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from opsflow.api.auth import Caller, CallerDep, require_role
from opsflow.api.deps import MetricsDep, PlatformStore, SettingsDep, StoreDep, TemporalDep
from opsflow.api.errors import InputInvalid, ServiceUnavailable
from opsflow.api.metrics import ApiMetrics
from opsflow.api.runbook_io import (
    build_arg,
    find_action,
    input_markdown,
    parse_json,
    request_digest,
    to_json,
    viewer_roles,
)
from opsflow.api.schemas import ProgressOut, RunOut, StartRunOut
from opsflow.catalog import RunbookSpec
from opsflow.config import Settings
from opsflow.shared import ids
from opsflow.shared.common import AuditEventIn, RunRecord
from opsflow.shared.errors import BUSINESS_ERROR_STATUS

log = structlog.get_logger("opsflow.api")

SA_RUNBOOK = SearchAttributeKey.for_keyword(ids.SA_RUNBOOK)
SA_ACTOR = SearchAttributeKey.for_keyword(ids.SA_ACTOR)
SA_TENANT = SearchAttributeKey.for_keyword(ids.SA_TENANT)
SA_STATE = SearchAttributeKey.for_keyword(ids.SA_STATE)

# A query is answered by a worker; without one it would wait for the full RPC deadline.
QUERY_TIMEOUT = timedelta(seconds=10)
PROGRESS_TIMEOUT = timedelta(seconds=3)
UPDATE_TIMEOUT_S = 60.0
MAX_KEY_LEN = 200


@dataclass
class Ctx:
    """What every action needs: the caller and the app's clients."""

    caller: Caller
    client: Client
    store: PlatformStore
    settings: Settings
    metrics: ApiMetrics


def ui_url(settings: Settings, workflow_id: str, run_id: str) -> str:
    """Link to a run's history in the Temporal Web UI."""
    ns = quote(settings.temporal_namespace, safe="")
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{ns}/workflows/"
        f"{quote(workflow_id, safe='')}/{quote(run_id, safe='')}/history"
    )


def check_idempotency_key(key: str | None) -> str | None:
    """Validate an ``Idempotency-Key`` header value.

    Raises:
        InputInvalid: the key is too long or not printable ASCII.

    """
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LEN or not key.isascii() or not key.isprintable():
        raise InputInvalid(
            [
                {
                    "loc": ["header", "Idempotency-Key"],
                    "msg": f"must be 1 to {MAX_KEY_LEN} printable ASCII characters",
                    "type": "idempotency_key",
                }
            ]
        )
    return key


async def start_run(
    ctx: Ctx, spec: RunbookSpec, inp: Any, *, idempotency_key: str | None = None
) -> tuple[int, StartRunOut]:
    """Start a runbook's workflow for a validated input; one run per business key.

    Returns:
        (201, the new run), or (200, the running one) when the runbook answers a duplicate
        start with the existing run, or the stored answer of an earlier request with the same
        ``Idempotency-Key``.

    Raises:
        HTTPException: 409 when a run with the same id is running and the runbook refuses
            duplicates; 422 when the idempotency key was used for a different request.

    """
    from opsflow.adapters.idempotency import IdempotencyRecord

    require_role(ctx.caller, spec.start, f"starting runbook '{spec.name}'", ctx.metrics)
    if spec.validate is not None:
        try:
            spec.validate(inp)
        except ValueError as exc:
            error = {"loc": ["body"], "msg": str(exc), "type": "value_error"}
            raise InputInvalid([error]) from None
    actor = ctx.caller.actor
    data = to_json(spec.input, inp)
    digest = request_digest(spec.name, data)

    if idempotency_key is not None:
        replay = await _replay(ctx, spec, idempotency_key, digest)
        if replay is not None:
            return replay

    try:
        workflow_id = spec.workflow_id(inp)
        tenant = spec.tenant(inp)
        summary = spec.summary(inp)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputInvalid(
            [{"loc": ["body"], "msg": f"cannot derive the run's id: {exc}", "type": "value_error"}]
        ) from None

    try:
        handle = await ctx.client.start_workflow(
            spec.workflow.run,
            inp,
            id=workflow_id,
            task_queue=ctx.settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(SA_RUNBOOK, spec.name),
                    SearchAttributePair(SA_ACTOR, actor),
                    SearchAttributePair(SA_TENANT, tenant),
                    SearchAttributePair(SA_STATE, "started"),
                ]
            ),
            memo={ids.MEMO_ACTOR: actor, ids.MEMO_RUNBOOK: spec.name},
            static_summary=summary[:400],
            static_details=input_markdown(spec.name, actor, data),
            execution_timeout=spec.execution_timeout,
        )
    except WorkflowAlreadyStartedError:
        if idempotency_key is not None:
            # A concurrent request with the same key may have won the race: answer as it did.
            replay = await _replay(ctx, spec, idempotency_key, digest)
            if replay is not None:
                return replay
        return await _already_running(ctx, spec, workflow_id, idempotency_key, digest)

    run_id = handle.result_run_id or handle.first_execution_run_id or ""
    now = datetime.now(UTC)
    await ctx.store.upsert_run(
        RunRecord(
            workflow_id=workflow_id,
            run_id=run_id,
            runbook=spec.name,
            actor=actor,
            status="running",
            tenant=tenant,
            input=data,
        ),
        started_at=now,
    )
    await ctx.store.record_event(
        AuditEventIn(
            actor=actor,
            action="run.start",
            target=f"run:{workflow_id}",
            outcome="success",
            details={"runbook": spec.name, "run_id": run_id},
            workflow_id=workflow_id,
            run_id=run_id,
        )
    )
    ctx.metrics.runs_started.labels(spec.name, "started").inc()
    status = "RUNNING"
    if spec.await_result is not None:
        status = await await_outcome(ctx, spec, handle, workflow_id, run_id)
    out = StartRunOut(
        id=workflow_id,
        run_id=run_id,
        runbook=spec.name,
        status=status,
        ui_url=ui_url(ctx.settings, workflow_id, run_id),
    )
    log.info("run started", runbook=spec.name, workflow_id=workflow_id, run_id=run_id)
    if idempotency_key is not None:
        await ctx.store.idempotency_remember(
            IdempotencyRecord(
                actor=actor,
                key=idempotency_key,
                runbook=spec.name,
                request_sha256=digest,
                workflow_id=workflow_id,
                run_id=run_id,
                response={"status_code": 201, "body": out.model_dump(mode="json")},
                created_at=now,
            )
        )
    return 201, out


async def await_outcome(
    ctx: Ctx,
    spec: RunbookSpec,
    handle: WorkflowHandle[Any, Any],
    workflow_id: str,
    run_id: str,
) -> str:
    """Wait up to ``spec.await_result`` for a run; answer a business refusal with its 4xx.

    Returns:
        ``COMPLETED``, or ``RUNNING`` when the run outlasts the wait (the caller follows it),
        or ``FAILED`` for a failure that is not a business refusal (the run tells why).

    Raises:
        HTTPException: the status of ``opsflow.shared.errors.BUSINESS_ERROR_STATUS`` for the
            workflow's ``ApplicationError`` type, with its message.

    """
    assert spec.await_result is not None
    try:
        await asyncio.wait_for(handle.result(), spec.await_result.total_seconds())
    except TimeoutError:
        return "RUNNING"
    except WorkflowFailureError as exc:
        cause = exc.cause
        kind = getattr(cause, "type", None)
        code = BUSINESS_ERROR_STATUS.get(kind) if isinstance(kind, str) else None
        if code is None:
            return "FAILED"
        message = str(getattr(cause, "message", "") or cause)
        await ctx.store.record_event(
            AuditEventIn(
                actor=ctx.caller.actor,
                action="run.refused",
                target=f"run:{workflow_id}",
                outcome="rejected",
                details={"runbook": spec.name, "run_id": run_id, "error": message},
                workflow_id=workflow_id,
                run_id=run_id,
            )
        )
        raise HTTPException(status_code=code, detail=f"{spec.name} refused: {message}") from None
    return "COMPLETED"


async def _replay(
    ctx: Ctx, spec: RunbookSpec, key: str, digest: str
) -> tuple[int, StartRunOut] | None:
    rec = await ctx.store.idempotency_lookup(ctx.caller.actor, key)
    if rec is None:
        return None
    if rec.runbook != spec.name or rec.request_sha256 != digest:
        log.info("idempotency key reused for another request", runbook=spec.name)
        raise HTTPException(
            status_code=422,
            detail=(
                "Idempotency-Key was already used for a different request "
                f"(runbook '{rec.runbook}', workflow '{rec.workflow_id}'); "
                "send a new key for a new request"
            ),
        )
    stored = rec.response or {}
    body = stored.get("body") or {
        "id": rec.workflow_id,
        "run_id": rec.run_id or "",
        "runbook": rec.runbook,
        "status": "RUNNING",
        "ui_url": ui_url(ctx.settings, rec.workflow_id, rec.run_id or ""),
    }
    log.info("idempotent replay", runbook=spec.name, workflow_id=rec.workflow_id)
    return int(stored.get("status_code", 201)), StartRunOut.model_validate(body)


async def _already_running(
    ctx: Ctx, spec: RunbookSpec, workflow_id: str, key: str | None, digest: str
) -> tuple[int, StartRunOut]:
    from opsflow.adapters.idempotency import IdempotencyRecord

    if spec.on_conflict == "conflict":
        log.info("start refused: already running", runbook=spec.name, workflow_id=workflow_id)
        raise HTTPException(
            status_code=409,
            detail=(
                f"runbook '{spec.name}' is already running as workflow '{workflow_id}'; "
                "end that run (signal or cancel) before starting another"
            ),
        )
    desc = await ctx.client.get_workflow_handle(workflow_id).describe()
    ctx.metrics.runs_started.labels(spec.name, "existing").inc()
    out = StartRunOut(
        id=workflow_id,
        run_id=desc.run_id,
        runbook=spec.name,
        status=_status(desc),
        ui_url=ui_url(ctx.settings, workflow_id, desc.run_id),
    )
    if key is not None:
        await ctx.store.idempotency_remember(
            IdempotencyRecord(
                actor=ctx.caller.actor,
                key=key,
                runbook=spec.name,
                request_sha256=digest,
                workflow_id=workflow_id,
                run_id=desc.run_id,
                response={"status_code": 200, "body": out.model_dump(mode="json")},
                created_at=datetime.now(UTC),
            )
        )
    return 200, out


def _status(desc: WorkflowExecutionDescription) -> str:
    return desc.status.name if desc.status is not None else "UNKNOWN"


@dataclass
class FoundRun:
    """A run found by workflow id, with its runbook."""

    spec: RunbookSpec
    handle: WorkflowHandle[Any, Any]
    desc: WorkflowExecutionDescription

    @property
    def running(self) -> bool:
        """True while the run is open."""
        return self.desc.status == WorkflowExecutionStatus.RUNNING


async def find_run(ctx: Ctx, catalog: Mapping[str, RunbookSpec], workflow_id: str) -> FoundRun:
    """Describe the latest run of a workflow id and find its runbook.

    The runbook comes from the run's ``OpsRunbook`` search attribute, else its memo, else the
    ``runs`` read model, else the workflow type.

    Raises:
        HTTPException: 404 when no such run exists or it belongs to no known runbook.

    """
    handle = ctx.client.get_workflow_handle(workflow_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise HTTPException(status_code=404, detail=f"no run with id '{workflow_id}'") from None
        raise
    name = desc.typed_search_attributes.get(SA_RUNBOOK)
    if not name:
        memo = await desc.memo()
        value = memo.get(ids.MEMO_RUNBOOK)
        name = value if isinstance(value, str) else None
    if not name:
        row = await ctx.store.get_run(workflow_id)
        name = str(row["runbook"]) if row else None
    spec = catalog.get(name) if name else None
    if spec is None:
        spec = next((s for s in catalog.values() if _type_name(s) == desc.workflow_type), None)
    if spec is None:
        raise HTTPException(
            status_code=404, detail=f"run '{workflow_id}' belongs to no runbook of this catalog"
        )
    # Address the described run from now on, so a new run under the same id cannot slip in
    # between the role check and the action.
    handle = ctx.client.get_workflow_handle(workflow_id, run_id=desc.run_id)
    return FoundRun(spec=spec, handle=handle, desc=desc)


def _type_name(spec: RunbookSpec) -> str:
    defn = getattr(spec.workflow, "__temporal_workflow_definition", None)
    name = getattr(defn, "name", None)
    return name if isinstance(name, str) else spec.workflow.__name__


async def describe_run(ctx: Ctx, catalog: Mapping[str, RunbookSpec], workflow_id: str) -> RunOut:
    """Status, input, result or failure, progress and times of a run.

    Raises:
        HTTPException: 404 unknown run; 403 when the caller may not see this runbook's runs.

    """
    found = await find_run(ctx, catalog, workflow_id)
    spec, desc = found.spec, found.desc
    require_role(ctx.caller, viewer_roles(spec), f"reading runs of '{spec.name}'", ctx.metrics)
    memo = await desc.memo()
    actor = desc.typed_search_attributes.get(SA_ACTOR) or memo.get(ids.MEMO_ACTOR)
    out = RunOut(
        id=workflow_id,
        run_id=desc.run_id,
        runbook=spec.name,
        status=_status(desc),
        input=await _first_input(ctx.client, found.handle),
        started_at=desc.start_time,
        closed_at=desc.close_time,
        ui_url=ui_url(ctx.settings, workflow_id, desc.run_id),
        actor=str(actor) if actor else None,
        tenant=desc.typed_search_attributes.get(SA_TENANT),
    )
    if found.running:
        progress = spec.queries.get("progress")
        if progress is not None and ctx.caller.role in progress.roles:
            out.progress = await _progress(found.handle)
    elif desc.status == WorkflowExecutionStatus.COMPLETED:
        try:
            out.result = await found.handle.result(follow_runs=False, rpc_timeout=QUERY_TIMEOUT)
        except WorkflowFailureError as exc:  # raced with a reset; report as a failure
            out.failure = _failure_text(exc)
    elif desc.status != WorkflowExecutionStatus.CONTINUED_AS_NEW:
        try:
            await found.handle.result(follow_runs=False, rpc_timeout=QUERY_TIMEOUT)
        except WorkflowFailureError as exc:
            out.failure = _failure_text(exc)
        except Exception as exc:  # never let a failure's decoding hide the status
            out.failure = f"{_status(desc).lower()}: {type(exc).__name__}"
    return out


def _failure_text(exc: WorkflowFailureError) -> str:
    cause: BaseException | None = exc.cause
    parts: list[str] = []
    while cause is not None and len(parts) < 4:
        message = getattr(cause, "message", None) or str(cause) or type(cause).__name__
        parts.append(str(message))
        cause = cause.__cause__
    return ": ".join(parts) or "failed"


async def _first_input(client: Client, handle: WorkflowHandle[Any, Any]) -> Any:
    try:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=QUERY_TIMEOUT):
            attrs = event.workflow_execution_started_event_attributes
            values = await client.data_converter.decode(attrs.input.payloads)
            if not values:
                return None
            return values[0] if len(values) == 1 else list(values)
    except RPCError as exc:
        log.warning("cannot read run input", error=exc.message)
    return None


async def _progress(handle: WorkflowHandle[Any, Any]) -> ProgressOut | None:
    try:
        value = await handle.query("progress", rpc_timeout=PROGRESS_TIMEOUT)
    except Exception as exc:  # progress is a courtesy: a slow or missing worker must not fail GET
        log.info("progress query failed", error=str(exc))
        return None
    if isinstance(value, dict):
        try:
            return ProgressOut.model_validate(value)
        except ValueError:
            return None
    return None


async def send_signal(
    ctx: Ctx,
    catalog: Mapping[str, RunbookSpec],
    workflow_id: str,
    name: str,
    body: bytes,
    *,
    found: FoundRun | None = None,
) -> None:
    """Role-check and send a signal declared by the run's runbook; audit it.

    The raw body is parsed only after the run, the signal and the role have been checked, so
    those answer first (404, 403) whatever the body holds.

    Raises:
        HTTPException: 404 unknown run or signal, 403 wrong role, 400 malformed JSON,
            409 run not running.
        InputInvalid: the argument does not match the signal's dataclass.

    """
    found = found or await find_run(ctx, catalog, workflow_id)
    action = find_action(found.spec, "signal", name)
    require_role(
        ctx.caller, action.roles, f"signal '{name}' of runbook '{found.spec.name}'", ctx.metrics
    )
    arg = build_arg(action, parse_json(body), ctx.caller.actor)
    _require_running(found, "signals")

    async def send() -> None:
        try:
            await _signal(found.handle, name, arg)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise HTTPException(
                    status_code=409, detail=f"run '{workflow_id}' has ended"
                ) from None
            raise

    await _signal_audited(ctx, found.spec.name, found.desc.id, found.desc.run_id, name, send)


async def signal_runbook_run(
    ctx: Ctx, spec: RunbookSpec, workflow_id: str, name: str, body: bytes
) -> None:
    """Send a signal to the run of ``workflow_id``, a workflow of ``spec`` by construction.

    For routes whose path names the workflow id of one runbook (``sla:request:<id>``), the
    runbook is known without asking Temporal: the role check and the argument need only the
    catalog, and the signal is the one round trip to the server - a describe happens only
    when the signal finds no running workflow, to answer 404 (never existed) or 409 (ended).
    The current run gets the signal, as a bare client's ``signal`` would.

    Raises:
        HTTPException: 404 unknown signal or run, 403 wrong role, 400 malformed JSON,
            409 run not running.
        InputInvalid: the argument does not match the signal's dataclass.

    """
    action = find_action(spec, "signal", name)
    require_role(ctx.caller, action.roles, f"signal '{name}' of runbook '{spec.name}'", ctx.metrics)
    arg = build_arg(action, parse_json(body), ctx.caller.actor)
    handle = ctx.client.get_workflow_handle(workflow_id)

    async def send() -> None:
        try:
            await _signal(handle, name, arg)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            found = await find_run(ctx, {spec.name: spec}, workflow_id)  # 404: never existed
            _require_running(found, "signals")  # 409 if it ended
            # A new run started in between: it gets the signal.
            await _signal(found.handle, name, arg)

    # The run id is not known without a describe: the events name the workflow id.
    await _signal_audited(ctx, spec.name, workflow_id, None, name, send)


async def run_update(
    ctx: Ctx, catalog: Mapping[str, RunbookSpec], workflow_id: str, name: str, body: bytes
) -> Any:
    """Role-check and execute an update; return its result.

    Raises:
        HTTPException: 404/403/409 as for signals; 422 when the workflow rejects the update.

    """
    found = await find_run(ctx, catalog, workflow_id)
    action = find_action(found.spec, "update", name)
    require_role(
        ctx.caller, action.roles, f"update '{name}' of runbook '{found.spec.name}'", ctx.metrics
    )
    arg = build_arg(action, parse_json(body), ctx.caller.actor)
    _require_running(found, "updates")
    try:
        call = (
            found.handle.execute_update(name)
            if arg is None
            else found.handle.execute_update(name, arg)
        )
        result = await asyncio.wait_for(call, UPDATE_TIMEOUT_S)
    except WorkflowUpdateFailedError as exc:
        message = getattr(exc.cause, "message", None) or str(exc.cause)
        await _audit(ctx, found, "run.update", "rejected", {"update": name, "error": message})
        raise HTTPException(
            status_code=422, detail=f"update '{name}' rejected: {message}"
        ) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise ServiceUnavailable("temporal worker", "update not answered in time") from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status_code=409, detail=f"run '{workflow_id}' has ended") from None
        raise
    await _audit(ctx, found, "run.update", "success", {"update": name})
    return result


async def run_query(
    ctx: Ctx, catalog: Mapping[str, RunbookSpec], workflow_id: str, name: str, data: Any
) -> Any:
    """Role-check and run a query; return its answer (no audit: nothing changes).

    Raises:
        HTTPException: 404/403; 409 when Temporal rejects the query for the run's state;
            422 when the workflow's query handler fails.

    """
    found = await find_run(ctx, catalog, workflow_id)
    action = find_action(found.spec, "query", name)
    require_role(
        ctx.caller, action.roles, f"query '{name}' of runbook '{found.spec.name}'", ctx.metrics
    )
    arg = build_arg(action, data, ctx.caller.actor)
    try:
        if arg is None:
            return await found.handle.query(name, rpc_timeout=QUERY_TIMEOUT)
        return await found.handle.query(name, arg, rpc_timeout=QUERY_TIMEOUT)
    except WorkflowQueryRejectedError:
        raise HTTPException(
            status_code=409, detail=f"query '{name}' rejected in state {_status(found.desc)}"
        ) from None
    except WorkflowQueryFailedError as exc:
        raise HTTPException(
            status_code=422, detail=f"query '{name}' failed: {exc.message}"
        ) from None


async def cancel_run(ctx: Ctx, catalog: Mapping[str, RunbookSpec], workflow_id: str) -> None:
    """Role-check and request cancellation of a running run; audit it.

    Raises:
        HTTPException: 404 unknown run, 403 wrong role, 409 run not running.

    """
    found = await find_run(ctx, catalog, workflow_id)
    require_role(
        ctx.caller, found.spec.cancel, f"cancelling runs of '{found.spec.name}'", ctx.metrics
    )
    _require_running(found, "cancellation")
    try:
        await found.handle.cancel()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status_code=409, detail=f"run '{workflow_id}' has ended") from None
        raise
    await _audit(ctx, found, "run.cancel", "success", {})


def _require_running(found: FoundRun, what: str) -> None:
    if not found.running:
        raise HTTPException(
            status_code=409,
            detail=(
                f"run '{found.desc.id}' is {_status(found.desc)}; {what} go only to running runs"
            ),
        )


async def _signal(handle: Any, name: str, arg: Any) -> None:
    # A signal without a dataclass goes without an argument (None would be sent as one).
    await (handle.signal(name) if arg is None else handle.signal(name, arg))


async def _signal_audited(
    ctx: Ctx,
    runbook: str,
    workflow_id: str,
    run_id: str | None,
    name: str,
    send: Callable[[], Awaitable[None]],
) -> None:
    """Audit a signal (outcome ``requested``), then send it; a failure adds a ``failed`` row.

    The row comes first so that a signal is never delivered without one: written after the
    signal, an API that died in between, or an audit write that failed, left a delivered
    signal unaudited - and answered 503 for it, inviting a retry that sent it twice (a second
    escalation, a second round of mail and SMS). Now an audit write that fails answers 503
    before anything is sent. It is also quicker: the append no longer lands in the moment the
    worker handles the signal and appends its own rows (SLA bench, one escalation at a time,
    inside the API: the append 2.7 to 3.0 ms at p50 and 9 to 13 ms at p99 after the signal,
    1.7 and 4.5 to 5.1 ms before it).
    """
    details: dict[str, Any] = {"signal": name}
    await _audit_run(ctx, runbook, workflow_id, run_id, "run.signal", "requested", details)
    try:
        await send()
    except Exception as exc:
        reason = exc.detail if isinstance(exc, HTTPException) else f"{type(exc).__name__}: {exc}"
        try:
            await _audit_run(
                ctx,
                runbook,
                workflow_id,
                run_id,
                "run.signal",
                "failed",
                {**details, "error": str(reason)[:500]},
            )
        except Exception:  # the signal's own error is the answer; say why this row is missing
            log.exception("cannot audit a failed signal", workflow_id=workflow_id, signal=name)
        raise


async def _audit(
    ctx: Ctx, found: FoundRun, action: str, outcome: str, details: dict[str, Any]
) -> None:
    await _audit_run(
        ctx, found.spec.name, found.desc.id, found.desc.run_id, action, outcome, details
    )


async def _audit_run(
    ctx: Ctx,
    runbook: str,
    workflow_id: str,
    run_id: str | None,
    action: str,
    outcome: str,
    details: dict[str, Any],
) -> None:
    extra = {"run_id": run_id} if run_id else {}
    await ctx.store.record_event(
        AuditEventIn(
            actor=ctx.caller.actor,
            action=action,
            target=f"run:{workflow_id}",
            outcome=outcome,
            details={"runbook": runbook, **extra, **details},
            workflow_id=workflow_id,
            run_id=run_id,
        )
    )
    log.info(action, runbook=runbook, workflow_id=workflow_id, outcome=outcome)


async def get_ctx(
    caller: CallerDep,
    client: TemporalDep,
    store: StoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Ctx:
    """Dependency: the caller (authenticated first: 401 precedes any Temporal call), clients."""
    return Ctx(caller=caller, client=client, store=store, settings=settings, metrics=metrics)


CtxDep = Annotated[Ctx, Depends(get_ctx)]
