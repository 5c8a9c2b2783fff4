"""``/runbooks``: the catalog, and starting a run of any runbook."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Request
from fastapi.responses import JSONResponse

from opsflow.api.actions import CtxDep, check_idempotency_key, start_run
from opsflow.api.auth import CallerDep, require_role
from opsflow.api.deps import CatalogDep
from opsflow.api.routes import AUTH_ERRORS, BODY_ERRORS, NOT_FOUND
from opsflow.api.runbook_io import openapi_request_body, read_json, runbook_out, validate_dataclass
from opsflow.api.schemas import RunbookOut, StartRunOut
from opsflow.catalog import RUNBOOKS, RunbookSpec

router = APIRouter(tags=["runbooks"])

RunbookName = Annotated[str, Path(max_length=200, description="Runbook name, e.g. health-check")]


def _spec(catalog: CatalogDep, name: str) -> RunbookSpec:
    spec = catalog.get(name)
    if spec is None:
        known = ", ".join(sorted(catalog)) or "none"
        raise HTTPException(status_code=404, detail=f"no runbook '{name}' (runbooks: {known})")
    return spec


@router.get("/runbooks", responses=AUTH_ERRORS)
async def list_runbooks(caller: CallerDep, catalog: CatalogDep) -> list[RunbookOut]:
    """List every runbook: who may start it, its signals, updates and queries, its input schema."""
    return [runbook_out(spec) for spec in catalog.values()]


@router.get("/runbooks/{name}", responses={**AUTH_ERRORS, **NOT_FOUND})
async def get_runbook(name: RunbookName, caller: CallerDep, catalog: CatalogDep) -> RunbookOut:
    """One runbook of the catalog."""
    return runbook_out(_spec(catalog, name))


@router.post(
    "/runbooks/{name}/runs",
    status_code=201,
    response_model=StartRunOut,
    responses={
        200: {"model": StartRunOut, "description": "Already running (or an idempotent repeat)."},
        409: {
            "description": "A run with the same business key is running and the runbook "
            "refuses a second one."
        },
        **AUTH_ERRORS,
        **NOT_FOUND,
        **BODY_ERRORS,
    },
    openapi_extra=openapi_request_body(
        {name: spec.input for name, spec in RUNBOOKS.items()},
        "The runbook's input object (see `input_schema` in `GET /runbooks`).",
    ),
)
async def start(
    name: RunbookName,
    request: Request,
    ctx: CtxDep,
    catalog: CatalogDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeat a request safely: the same key and body answer the same run.",
        ),
    ] = None,
) -> JSONResponse:
    """Start a run of the runbook with the body as its input.

    The runbook's business key (or `Idempotency-Key`) makes a double submit start one run.
    """
    spec = _spec(catalog, name)
    # Refuse before reading the body: a caller without the role learns nothing about it.
    require_role(ctx.caller, spec.start, f"starting runbook '{spec.name}'", ctx.metrics)
    key = check_idempotency_key(idempotency_key)
    inp = validate_dataclass(spec.input, await read_json(request))
    status, out = await start_run(ctx, spec, inp, idempotency_key=key)
    return JSONResponse(status_code=status, content=out.model_dump(mode="json"))
