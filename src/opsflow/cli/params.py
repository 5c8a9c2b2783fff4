"""``--param key=value`` parsing, typed by the runbook's input JSON schema.

The API publishes each runbook's input schema (and each signal's and update's argument schema)
at ``GET /runbooks``; the CLI reads it so ``--param hours=4`` is sent as the integer 4 and a
typo such as ``--param hour=4`` is refused before anything is started. Validation proper
(ranges, patterns, required fields) stays with the API, which names the field in its 422.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opsflow.cli.client import CliError

_TRUE = {"true", "yes", "y", "on", "1"}
_FALSE = {"false", "no", "n", "off", "0"}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ParamError(CliError):
    """A ``--param``, ``--input`` or time option the CLI cannot use (a usage error)."""

    exit_code = 2


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (pydantic puts nested dataclasses under ``$defs``)."""
    seen = 0
    while "$ref" in schema and seen < 20:
        ref = str(schema["$ref"])
        if not ref.startswith("#/"):
            return schema
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        schema = node if isinstance(node, dict) else {}
        seen += 1
    return schema


def _types(schema: dict[str, Any], root: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Return the JSON types a property accepts and the schema of its non-null branch.

    ``int | None`` comes out of pydantic as ``anyOf: [{"type": "integer"}, {"type": "null"}]``;
    the non-null branch drives coercion and ``null`` stays possible.
    """
    schema = _resolve(schema, root)
    raw = schema.get("type")
    if isinstance(raw, str):
        return [raw], schema
    if isinstance(raw, list):
        return [str(t) for t in raw], schema
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            types: list[str] = []
            main: dict[str, Any] = {}
            for branch in branches:
                if not isinstance(branch, dict):
                    continue
                branch_types, resolved = _types(branch, root)
                types.extend(branch_types)
                if not main and branch_types != ["null"]:
                    main = resolved
            return types, main or schema
    if "enum" in schema or "const" in schema:
        return ["enum"], schema
    return [], schema


def _coerce_bool(key: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ParamError(f"--param {key}: expected true or false, got {value!r}")


def _coerce_json(key: str, value: str, kind: str) -> Any:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ParamError(
            f"--param {key}: expected a JSON {kind}, got {value!r} ({exc.msg})"
        ) from exc
    expected = list if kind == "array" else dict
    if not isinstance(parsed, expected):
        raise ParamError(f"--param {key}: expected a JSON {kind}, got {value!r}")
    return parsed


def _guess(value: str) -> Any:
    """Without a schema: JSON when the text is JSON (``4``, ``true``, ``[1]``), else the text."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def coerce_value(key: str, value: str, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    """Convert one ``--param`` text to the type its JSON schema names.

    Args:
        key: The parameter's name (for messages).
        value: The text after ``=``.
        schema: The property's schema.
        root: The whole schema (for ``$ref``).

    Returns:
        An int, float, bool, list, dict, None (``null`` for a nullable property) or str.

    Raises:
        ParamError: The text is not a value of that type.

    """
    types, main = _types(schema, root)
    if "null" in types and value.strip().lower() in {"null", "none"}:
        return None
    enum = main.get("enum")
    types = [t for t in types if t != "null"]
    kind = types[0] if types else ""
    result: Any
    if kind == "integer":
        try:
            result = int(value.strip())
        except ValueError as exc:
            raise ParamError(f"--param {key}: expected an integer, got {value!r}") from exc
    elif kind == "number":
        try:
            number = float(value.strip())
        except ValueError as exc:
            raise ParamError(f"--param {key}: expected a number, got {value!r}") from exc
        result = int(number) if number.is_integer() and "." not in value else number
    elif kind == "boolean":
        result = _coerce_bool(key, value)
    elif kind == "array":
        if value.lstrip().startswith(("[", "{")):
            result = _coerce_json(key, value, "array")
        else:
            # A convenience for lists of simple values: --param emails=a@x.org,b@x.org
            raw_items = main.get("items")
            items: dict[str, Any] = raw_items if isinstance(raw_items, dict) else {}
            parts = [p.strip() for p in value.split(",") if p.strip()]
            result = [coerce_value(key, p, items, root) for p in parts]
    elif kind == "object":
        result = _coerce_json(key, value, "object")
    elif kind == "string":
        result = value
    else:
        # enum-only or an unknown schema: accept JSON literals, else the text.
        result = value if enum and value in enum else _guess(value)
    if isinstance(enum, list) and result not in enum:
        choices = ", ".join(str(c) for c in enum)
        raise ParamError(f"--param {key}: {value!r} is not one of: {choices}")
    return result


def split_pairs(pairs: list[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` texts (on the first ``=``), refusing empty keys."""
    out: list[tuple[str, str]] = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParamError(f"--param {pair!r}: expected key=value")
        out.append((key, value))
    return out


def parse_params(
    pairs: list[str], schema: dict[str, Any] | None, *, what: str = "the runbook"
) -> dict[str, Any]:
    """Turn ``--param key=value`` pairs into a JSON object typed by ``schema``.

    Args:
        pairs: The raw ``key=value`` texts, in order.
        schema: The object's JSON schema (``properties``), or None when none is published
            (values are then read as JSON when they parse, else as text).
        what: Names the target in messages ("runbook 'health-check'", "signal 'disable'").

    Returns:
        The object to send.

    Raises:
        ParamError: Malformed pair, unknown key, repeated key or a value of the wrong type.

    """
    result: dict[str, Any] = {}
    root = schema or {}
    obj = _resolve(root, root) if schema else {}
    properties = obj.get("properties") if isinstance(obj.get("properties"), dict) else None
    closed = properties is not None and obj.get("additionalProperties") is not True
    for key, value in split_pairs(pairs):
        if key in result:
            raise ParamError(f"--param {key} given twice")
        if properties is None:
            result[key] = _guess(value)
            continue
        if key not in properties:
            if closed:
                known = ", ".join(sorted(properties)) or "(none)"
                raise ParamError(f"unknown parameter {key!r} for {what}; known parameters: {known}")
            result[key] = _guess(value)
            continue
        prop = properties[key] if isinstance(properties[key], dict) else {}
        result[key] = coerce_value(key, value, prop, root)
    return result


def load_input(path: str | None) -> dict[str, Any]:
    """Read ``--input``: a JSON object from a file, or from stdin when the path is ``-``."""
    if path is None:
        return {}
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamError(f"--input {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParamError(f"--input {path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise ParamError(f"--input {path}: expected a JSON object")
    return data


def parse_time(value: str | None, *, option: str, now: datetime | None = None) -> str | None:
    """Read a ``--since``/``--until`` value: ISO 8601, or relative like ``15m``, ``2h``, ``7d``.

    Returns:
        An ISO 8601 timestamp with its offset (naive times are taken as UTC), or None.

    Raises:
        ParamError: The value is neither.

    """
    if value is None:
        return None
    match = _RELATIVE.match(value)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
        return moment.isoformat()
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ParamError(
            f"{option} {value!r}: expected an ISO time (2026-11-21T08:00:00Z) or an age "
            "like 30m, 2h, 7d"
        ) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.isoformat()
