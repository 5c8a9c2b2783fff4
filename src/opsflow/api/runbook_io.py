"""From HTTP to the catalog's dataclasses and back, for any runbook.

Request bodies are read raw and parsed here, so malformed JSON answers 400 (not FastAPI's 422)
and every schema violation answers 422 naming the field. The same ``TypeAdapter`` over the
runbook's input dataclass produces the JSON schema of ``GET /runbooks`` and the OpenAPI page, so
the API never needs a change when a runbook is added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, NoReturn

from fastapi import HTTPException, Request
from pydantic import TypeAdapter, ValidationError

from opsflow.api.auth import role_list
from opsflow.api.errors import InputInvalid, clean_errors
from opsflow.api.schemas import ActionOut, RunbookOut, ScheduleOut
from opsflow.catalog import ActionSpec, RunbookSpec
from opsflow.logs import REDACTED, is_secret_key
from opsflow.shared.roles import Role

_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def adapter(tp: type[Any]) -> TypeAdapter[Any]:
    """Return a cached ``TypeAdapter`` for a catalog dataclass (building one is slow)."""
    found = _ADAPTERS.get(tp)
    if found is None:
        found = _ADAPTERS[tp] = TypeAdapter(tp)
    return found


def _reject_constant(name: str) -> NoReturn:
    # NaN and Infinity are not JSON; PostgreSQL's jsonb refuses them too.
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request) -> Any:
    """Read and parse the request body; an empty body is ``None``.

    Raises:
        HTTPException: 400 when the body is not JSON.

    """
    return parse_json(await request.body())


def parse_json(body: bytes) -> Any:
    """Parse a request body; an empty body is ``None``.

    Raises:
        HTTPException: 400 when the body is not JSON.

    """
    if not body.strip():
        return None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPException(status_code=400, detail="malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HTTPException(status_code=400, detail=f"malformed JSON: {_json_error(exc)}") from None


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "body is not UTF-8"
    return str(exc)


def check_text(value: Any, loc: tuple[str | int, ...] = ("body",)) -> None:
    """Refuse strings no database or Temporal payload can hold (NUL, lone surrogates).

    Checked before anything starts, so such input is a 422 instead of a failure halfway.

    Raises:
        InputInvalid: naming the first field that holds such a string.

    """
    errors: list[dict[str, Any]] = []

    def visit(v: Any, where: tuple[str | int, ...]) -> None:
        if len(errors) >= 10:
            return
        if isinstance(v, str):
            if "\x00" in v:
                errors.append(
                    {
                        "loc": list(where),
                        "msg": "text must not contain NUL (\\u0000)",
                        "type": "string_nul",
                    }
                )
                return
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                errors.append(
                    {
                        "loc": list(where),
                        "msg": "text must be valid Unicode (no lone surrogates)",
                        "type": "string_unicode",
                    }
                )
        elif isinstance(v, dict):
            for k, item in v.items():
                visit(k, where)
                visit(item, (*where, str(k)))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                visit(item, (*where, i))

    visit(value, loc)
    if errors:
        raise InputInvalid(errors)


def validate_dataclass(tp: type[Any], data: Any, *, loc: tuple[str | int, ...] = ("body",)) -> Any:
    """Validate ``data`` into the dataclass ``tp`` (``None`` means ``{}``).

    Unknown top-level fields are refused: a misspelt ``hour`` must not silently become the
    default of ``hours``.

    Raises:
        InputInvalid: 422 naming each field that failed.

    """
    if data is None:
        data = {}
    check_text(data, loc)
    if isinstance(data, dict) and dataclasses.is_dataclass(tp):
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise InputInvalid(
                [
                    {
                        "loc": [*loc, k],
                        "msg": f"unknown field; known fields: {sorted(known)}",
                        "type": "extra_forbidden",
                    }
                    for k in unknown[:10]
                ]
            )
    try:
        return adapter(tp).validate_python(data)
    except ValidationError as exc:
        raise InputInvalid(clean_errors(exc.errors(include_url=False), prefix=loc)) from None


def to_json(tp: type[Any], value: Any) -> Any:
    """Return a catalog dataclass instance as plain JSON data."""
    return adapter(tp).dump_python(value, mode="json")


def request_digest(runbook: str, payload: Any) -> str:
    """SHA-256 of a runbook name and a canonical JSON payload (idempotency comparisons)."""
    canonical = json.dumps([runbook, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def input_markdown(name: str, actor: str, data: Mapping[str, Any]) -> str:
    """Markdown of a run's input for the Web UI's static details (secret-named keys hidden)."""
    lines = [
        f"**Runbook:** `{name}`  ",
        f"**Started by:** `{actor}`",
        "",
        "| field | value |",
        "| --- | --- |",
    ]
    for key, value in data.items():
        shown = REDACTED if is_secret_key(key) else json.dumps(value, ensure_ascii=False)
        shown = shown.replace("|", "\\|").replace("\n", " ")
        if len(shown) > 300:
            shown = shown[:297] + "..."
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def schema_of(tp: type[Any] | None) -> dict[str, Any] | None:
    """JSON schema of a catalog dataclass (None when there is no argument)."""
    return adapter(tp).json_schema() if tp is not None else None


def example_of(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Return a sample object for a schema: each property's first example, else its default."""
    out: dict[str, Any] = {}
    for prop, sub in schema.get("properties", {}).items():
        if sub.get("examples"):
            out[prop] = sub["examples"][0]
        elif "default" in sub:
            out[prop] = sub["default"]
    return out


def _action_out(action: ActionSpec) -> ActionOut:
    return ActionOut(
        roles=role_list(action.roles), schema=schema_of(action.arg), description=action.description
    )


def runbook_out(spec: RunbookSpec) -> RunbookOut:
    """Render one catalog entry for ``GET /runbooks``."""
    schedule = None
    if spec.schedule is not None:
        schedule = ScheduleOut(
            id=spec.schedule.id,
            cron=spec.schedule.cron,
            interval_seconds=(
                spec.schedule.interval.total_seconds() if spec.schedule.interval else None
            ),
            description=spec.schedule.description,
        )
    input_schema = adapter(spec.input).json_schema()
    return RunbookOut(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        trigger=list(spec.trigger),
        start_roles=role_list(spec.start),
        signals={n: _action_out(a) for n, a in spec.signals.items()},
        updates={n: _action_out(a) for n, a in spec.updates.items()},
        queries={n: _action_out(a) for n, a in spec.queries.items()},
        cancel_roles=role_list(spec.cancel),
        on_conflict=spec.on_conflict,
        schedule=schedule,
        input_schema=input_schema,
        input_example=example_of(input_schema),
    )


def viewer_roles(spec: RunbookSpec) -> frozenset[Role]:
    """Roles that may read a runbook's runs (input, result, progress).

    Whoever may act on a runbook may see its runs; auditors and compliance officers may see
    every run, since reviewing runs is their job.
    """
    out: set[Role] = set(spec.start) | set(spec.cancel) | {Role.AUDITOR, Role.COMPLIANCE}
    for group in (spec.signals, spec.updates, spec.queries):
        for action in group.values():
            out |= action.roles
    return frozenset(out)


def find_action(spec: RunbookSpec, kind: str, name: str) -> ActionSpec:
    """Return a runbook's signal, update or query by name.

    Raises:
        HTTPException: 404 naming the ones that exist.

    """
    group: Mapping[str, ActionSpec] = {
        "signal": spec.signals,
        "update": spec.updates,
        "query": spec.queries,
    }[kind]
    action = group.get(name)
    if action is None:
        known = ", ".join(sorted(group)) or "none"
        raise HTTPException(
            status_code=404,
            detail=f"runbook '{spec.name}' has no {kind} '{name}' (its {kind}s: {known})",
        )
    return action


def build_arg(action: ActionSpec, data: Any, actor: str) -> Any:
    """Validate a signal/update/query argument; fill its ``actor`` field with the caller.

    Raises:
        InputInvalid: the argument does not match the declared dataclass.
        HTTPException: 422 when an argument is sent to an action that takes none.

    """
    if action.arg is None:
        if data not in (None, {}):
            raise InputInvalid(
                [{"loc": ["body"], "msg": "this action takes no argument", "type": "no_argument"}]
            )
        return None
    if isinstance(data, dict) and dataclasses.is_dataclass(action.arg):
        if any(f.name == "actor" for f in dataclasses.fields(action.arg)):
            # Whatever the client claims, the audited actor is the authenticated caller.
            data = {**data, "actor": actor}
    elif data is None and dataclasses.is_dataclass(action.arg):
        data = (
            {"actor": actor}
            if any(f.name == "actor" for f in dataclasses.fields(action.arg))
            else {}
        )
    return validate_dataclass(action.arg, data)


def openapi_request_body(types: Mapping[str, type[Any]], description: str) -> dict[str, Any]:
    """Return an OpenAPI ``requestBody`` offering each catalog dataclass, with examples."""
    schemas = [adapter(tp).json_schema() for tp in types.values()]
    examples = {
        key: {"summary": key, "value": example_of(schema)}
        for key, schema in zip(types, schemas, strict=True)
    }
    one_of = [_inline(schema) for schema in schemas]
    return {
        "requestBody": {
            "required": False,
            "description": description,
            "content": {
                "application/json": {
                    "schema": {"oneOf": one_of} if one_of else {"type": "object"},
                    "examples": examples,
                }
            },
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    # Nested dataclasses produce "$defs" with "#/$defs/X" refs, which OpenAPI would resolve
    # against the document root; resolving them in place keeps each schema self-contained.
    defs = schema.get("$defs", {})

    def resolve(node: Any, depth: int = 0) -> Any:
        if depth > 20:
            return {}
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
                return resolve(defs[ref[8:]], depth + 1)
            return {k: resolve(v, depth + 1) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v, depth + 1) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
