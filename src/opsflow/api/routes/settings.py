"""``/settings/dev-role-production``: the seed's developer-role switch, backed by a runbook.

``PUT {"allow": true, "hours": 24, "reason": "..."}`` starts the ``dev-role-elevation`` runbook
for production through the same code path as ``POST /runbooks/dev-role-elevation/runs``;
``PUT {"allow": false}`` sends that run its ``disable`` signal. ``GET`` answers the seed's status
shape from the operated application's ``settings`` table.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import JSONResponse

from opsflow.api.actions import CtxDep, check_idempotency_key, find_run, send_signal, start_run
from opsflow.api.auth import CallerDep, require_role
from opsflow.api.deps import CatalogDep, MetricsDep, NowDep, SettingsDep, StoreDep
from opsflow.api.errors import InputInvalid
from opsflow.api.routes import AUTH_ERRORS, BODY_ERRORS
from opsflow.api.runbook_io import read_json, validate_dataclass
from opsflow.api.schemas import DevRoleStatusOut, SignalOut, StartRunOut
from opsflow.catalog import RunbookSpec
from opsflow.shared import ids
from opsflow.shared.dev_role_elevation import SETTING_KEY
from opsflow.shared.roles import Role, roles

router = APIRouter(tags=["settings"])

RUNBOOK = "dev-role-elevation"
ENVIRONMENT = "production"
STATUS_READERS = roles(Role.ADMIN, Role.SUPERADMIN, Role.AUDITOR)
SWITCHERS = roles(Role.ADMIN, Role.SUPERADMIN)

_PUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["allow"],
                    "properties": {
                        "allow": {"type": "boolean"},
                        "hours": {"type": "integer", "minimum": 1, "maximum": 72, "default": 24},
                        "reason": {"type": "string", "minLength": 3, "maxLength": 500},
                    },
                },
                "examples": {
                    "grant": {
                        "summary": "Grant for 24 hours",
                        "value": {
                            "allow": True,
                            "hours": 24,
                            "reason": "INC-2211: hot-fix the connector sync",
                        },
                    },
                    "disable": {"summary": "Turn it off now", "value": {"allow": False}},
                },
            }
        },
    }
}


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@router.get("/settings/dev-role-production", responses=AUTH_ERRORS)
async def get_dev_role_production(
    caller: CallerDep, store: StoreDep, settings: SettingsDep, metrics: MetricsDep, now: NowDep
) -> DevRoleStatusOut:
    """Whether developers may act in production now, and until when (the seed's shape)."""
    require_role(caller, STATUS_READERS, "reading the developer-role setting", metrics)
    value = await store.app_setting(SETTING_KEY)
    allowed = False
    expires_at: str | None = None
    if isinstance(value, dict) and value.get("allow") is True:
        expires = _parse_time(value.get("expires_at"))
        # A grant past its expiry is off even before health-check or the timer turns it off.
        if expires is not None and expires > now:
            allowed = True
            expires_at = expires.isoformat()
    return DevRoleStatusOut(
        allowed=allowed, is_production=settings.is_production, expires_at=expires_at
    )


def _spec(catalog: CatalogDep) -> RunbookSpec:
    spec = catalog.get(RUNBOOK)
    if spec is None:
        raise HTTPException(status_code=404, detail=f"runbook '{RUNBOOK}' is not in the catalog")
    return spec


@router.put(
    "/settings/dev-role-production",
    status_code=201,
    responses={
        201: {"model": StartRunOut, "description": "Grant started (a dev-role-elevation run)."},
        202: {"model": SignalOut, "description": "`disable` sent to the running grant."},
        404: {"description": "`allow: false` with no grant running."},
        409: {"description": "A grant is already running in production."},
        **AUTH_ERRORS,
        **BODY_ERRORS,
    },
    openapi_extra=_PUT_BODY,
    response_model=None,
)
async def put_dev_role_production(
    request: Request,
    ctx: CtxDep,
    catalog: CatalogDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Grant or end the developer role in production.

    `allow: true` with 1-72 `hours` and a `reason` starts a grant; `allow: false` ends the
    running one. Both go through the `dev-role-elevation` runbook and are audited.
    """
    require_role(ctx.caller, SWITCHERS, "switching the developer role in production", ctx.metrics)
    spec = _spec(catalog)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("allow"), bool):
        raise InputInvalid(
            [{"loc": ["body", "allow"], "msg": "required: true or false", "type": "bool_type"}]
        )
    rest = {k: v for k, v in body.items() if k != "allow"}
    if body["allow"]:
        if rest.get("environment", ENVIRONMENT) != ENVIRONMENT:
            raise InputInvalid(
                [
                    {
                        "loc": ["body", "environment"],
                        "msg": f"this setting is for {ENVIRONMENT} only",
                        "type": "value_error",
                    }
                ]
            )
        require_role(ctx.caller, spec.start, f"starting runbook '{RUNBOOK}'", ctx.metrics)
        inp = validate_dataclass(spec.input, {**rest, "environment": ENVIRONMENT})
        status, out = await start_run(
            ctx, spec, inp, idempotency_key=check_idempotency_key(idempotency_key)
        )
        return JSONResponse(status_code=status, content=out.model_dump(mode="json"))

    workflow_id = ids.dev_role_elevation_workflow_id(ENVIRONMENT)
    try:
        found = await find_run(ctx, catalog, workflow_id)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise HTTPException(
                status_code=404, detail=f"no developer-role grant is running in {ENVIRONMENT}"
            ) from None
        raise
    if not found.running:
        raise HTTPException(
            status_code=404, detail=f"no developer-role grant is running in {ENVIRONMENT}"
        )
    await send_signal(ctx, catalog, workflow_id, "disable", json.dumps(rest).encode(), found=found)
    sent = SignalOut(id=workflow_id, signal="disable", accepted=True)
    return JSONResponse(status_code=202, content=sent.model_dump(mode="json"))
