"""``/runs``: read runs, and signal, update, query or cancel them as their runbook allows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder

from opsflow.api.actions import (
    CtxDep,
    cancel_run,
    describe_run,
    run_query,
    run_update,
    send_signal,
)
from opsflow.api.auth import CallerDep
from opsflow.api.deps import CatalogDep, StoreDep
from opsflow.api.routes import AUTH_ERRORS, BODY_ERRORS, NOT_FOUND
from opsflow.api.runbook_io import openapi_request_body, viewer_roles
from opsflow.api.schemas import CancelOut, QueryOut, RunListOut, RunOut, SignalOut, UpdateOut
from opsflow.catalog import RUNBOOKS

router = APIRouter(tags=["runs"])

CONFLICT: dict[int | str, dict[str, Any]] = {409: {"description": "The run has ended."}}

# Text filters go to PostgreSQL, which cannot hold NUL: refuse it as 422 up front.
_NO_NUL = r"^[^\x00]*$"
RunId = Annotated[str, Path(min_length=1, max_length=1000, description="The workflow id.")]
ActionName = Annotated[str, Path(min_length=1, max_length=200)]
TextFilter = Annotated[str | None, Query(max_length=200, pattern=_NO_NUL)]


def _utc(value: datetime | None) -> datetime | None:
    # A time without offset is read as UTC, never as the database session's zone.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@router.get("/runs", responses=AUTH_ERRORS)
async def list_runs(
    caller: CallerDep,
    store: StoreDep,
    catalog: CatalogDep,
    runbook: TextFilter = None,
    status: TextFilter = None,
    actor: TextFilter = None,
    tenant: TextFilter = None,
    since: Annotated[datetime | None, Query(description="Started at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Started before (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> RunListOut:
    """List runs from the `runs` read model, newest first, filtered and paginated.

    Input and result are shown only for runbooks the caller's role may read; other rows keep
    their status, times and actor.
    """
    items, total = await store.list_runs(
        runbook=runbook,
        status=status,
        actor=actor,
        tenant=tenant,
        since=_utc(since),
        until=_utc(until),
        limit=limit,
        offset=offset,
    )
    shown: list[dict[str, Any]] = []
    for row in items:
        row = dict(row)
        spec = catalog.get(str(row.get("runbook")))
        if spec is None or caller.role not in viewer_roles(spec):
            for key in ("input", "result", "failure", "figures"):
                if key in row:
                    row[key] = None
        shown.append(jsonable_encoder(row))
    return RunListOut(items=shown, total=total, limit=limit, offset=offset)


@router.get("/runs/{id}", responses={**AUTH_ERRORS, **NOT_FOUND})
async def get_run(id: RunId, ctx: CtxDep, catalog: CatalogDep) -> RunOut:
    """Return a run's status, input, result or failure, progress, times and Web UI link."""
    return await describe_run(ctx, catalog, id)


def _signal_types() -> dict[str, type[Any]]:
    return {
        f"{spec.name}.{name}": action.arg
        for spec in RUNBOOKS.values()
        for name, action in spec.signals.items()
        if action.arg is not None
    }


def _update_types() -> dict[str, type[Any]]:
    return {
        f"{spec.name}.{name}": action.arg
        for spec in RUNBOOKS.values()
        for name, action in spec.updates.items()
        if action.arg is not None
    }


@router.post(
    "/runs/{id}/signals/{name}",
    status_code=202,
    responses={**AUTH_ERRORS, **NOT_FOUND, **BODY_ERRORS, **CONFLICT},
    openapi_extra=openapi_request_body(
        _signal_types(), "The signal's argument (empty when all its fields have defaults)."
    ),
)
async def signal(
    id: RunId,
    name: ActionName,
    request: Request,
    ctx: CtxDep,
    catalog: CatalogDep,
) -> SignalOut:
    """Send a signal the run's runbook declares, if the caller's role may send it."""
    await send_signal(ctx, catalog, id, name, await request.body())
    return SignalOut(id=id, signal=name, accepted=True)


@router.post(
    "/runs/{id}/updates/{name}",
    responses={**AUTH_ERRORS, **NOT_FOUND, **BODY_ERRORS, **CONFLICT},
    openapi_extra=openapi_request_body(_update_types(), "The update's argument."),
)
async def update(
    id: RunId,
    name: ActionName,
    request: Request,
    ctx: CtxDep,
    catalog: CatalogDep,
) -> UpdateOut:
    """Execute an update; answers its result, or 422 with the workflow's validation error."""
    result = await run_update(ctx, catalog, id, name, await request.body())
    return UpdateOut(id=id, update=name, result=jsonable_encoder(result))


@router.get("/runs/{id}/queries/{name}", responses={**AUTH_ERRORS, **NOT_FOUND})
async def query(
    id: RunId,
    name: ActionName,
    ctx: CtxDep,
    catalog: CatalogDep,
    arg: Annotated[
        str | None, Query(max_length=65536, description="The query's argument as JSON.")
    ] = None,
) -> QueryOut:
    """Run a query the run's runbook declares and answer its result."""
    data: Any = None
    if arg:
        try:
            data = json.loads(arg)
        except (ValueError, RecursionError):
            raise HTTPException(status_code=400, detail="arg is not valid JSON") from None
    result = await run_query(ctx, catalog, id, name, data)
    return QueryOut(id=id, query=name, result=jsonable_encoder(result))


@router.post(
    "/runs/{id}/cancel", status_code=202, responses={**AUTH_ERRORS, **NOT_FOUND, **CONFLICT}
)
async def cancel(id: RunId, ctx: CtxDep, catalog: CatalogDep) -> CancelOut:
    """Request cancellation; the workflow runs its clean-up (e.g. revokes a grant) and ends."""
    await cancel_run(ctx, catalog, id)
    return CancelOut(id=id, cancel_requested=True)
