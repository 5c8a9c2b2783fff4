"""--param parsing typed by the runbook's JSON schema, --input and time options."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsflow.cli.params import ParamError, load_input, parse_params, parse_time

# Shapes as pydantic's TypeAdapter publishes them for dataclasses (anyOf for Optional,
# $ref/$defs for nested dataclasses).
SCHEMA = {
    "type": "object",
    "properties": {
        "hours": {"type": "integer", "minimum": 1, "maximum": 72},
        "ratio": {"type": "number"},
        "notify": {"type": "boolean"},
        "reason": {"type": "string"},
        "emails": {"type": "array", "items": {"type": "string"}},
        "ids": {"type": "array", "items": {"type": "integer"}},
        "extra": {"type": "object"},
        "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        "mode": {"enum": ["fast", "safe"]},
        "window": {"$ref": "#/$defs/Window"},
    },
    "required": ["reason"],
    "$defs": {"Window": {"type": "object", "properties": {"hours": {"type": "integer"}}}},
}


def test_values_are_coerced_by_schema_type() -> None:
    got = parse_params(
        [
            "hours=4",
            "ratio=0.5",
            "notify=false",
            "reason=INC-1: fix = now",  # only the first '=' splits
            "emails=a@example.com, b@example.com",
            "ids=[1,2,3]",
            'extra={"k": [1]}',
            "limit=null",
            "mode=safe",
            'window={"hours": 2}',
        ],
        SCHEMA,
    )
    assert got == {
        "hours": 4,
        "ratio": 0.5,
        "notify": False,
        "reason": "INC-1: fix = now",
        "emails": ["a@example.com", "b@example.com"],
        "ids": [1, 2, 3],
        "extra": {"k": [1]},
        "limit": None,
        "mode": "safe",
        "window": {"hours": 2},
    }
    assert isinstance(got["hours"], int)


@pytest.mark.parametrize(
    "text,expected", [("yes", True), ("ON", True), ("0", False), ("No", False)]
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert parse_params([f"notify={text}"], SCHEMA) == {"notify": expected}


def test_nullable_integer_takes_numbers_too() -> None:
    assert parse_params(["limit=7"], SCHEMA) == {"limit": 7}


def test_comma_list_items_are_typed() -> None:
    assert parse_params(["ids=1,2"], SCHEMA) == {"ids": [1, 2]}


def test_string_keeps_numeric_looking_text() -> None:
    assert parse_params(["reason=123"], SCHEMA) == {"reason": "123"}


@pytest.mark.parametrize(
    "pair,fragment",
    [
        ("hours=four", "expected an integer"),
        ("ratio=x", "expected a number"),
        ("notify=maybe", "expected true or false"),
        ("ids=[1,", "expected a JSON array"),
        ('ids={"a":1}', "expected a JSON array"),
        ("extra=[1]", "expected a JSON object"),
        ("mode=slow", "not one of: fast, safe"),
        ("ids=1,x", "expected an integer"),
    ],
)
def test_wrong_types_are_refused_naming_the_key(pair: str, fragment: str) -> None:
    with pytest.raises(ParamError) as err:
        parse_params([pair], SCHEMA)
    assert fragment in str(err.value)
    assert pair.split("=")[0] in str(err.value)
    assert err.value.exit_code == 2


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(ParamError) as err:
        parse_params(["hour=4"], SCHEMA, what="runbook 'dev-role-elevation'")
    msg = str(err.value)
    assert "unknown parameter 'hour'" in msg
    assert "runbook 'dev-role-elevation'" in msg
    assert "hours" in msg and "reason" in msg


def test_additional_properties_allowed_passes_unknown_keys() -> None:
    schema = {"type": "object", "properties": {}, "additionalProperties": True}
    assert parse_params(["x=1", "y=text"], schema) == {"x": 1, "y": "text"}


@pytest.mark.parametrize("pair", ["novalue", "=1"])
def test_malformed_pair(pair: str) -> None:
    with pytest.raises(ParamError, match="expected key=value"):
        parse_params([pair], SCHEMA)


def test_repeated_key_is_refused() -> None:
    with pytest.raises(ParamError, match="given twice"):
        parse_params(["hours=1", "hours=2"], SCHEMA)


def test_without_schema_values_are_json_or_text() -> None:
    assert parse_params(["a=4", "b=true", "c=hello", "d=[1]"], None) == {
        "a": 4,
        "b": True,
        "c": "hello",
        "d": [1],
    }


def test_load_input_reads_object(tmp_path: Path) -> None:
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"hours": 2}))
    assert load_input(str(path)) == {"hours": 2}
    assert load_input(None) == {}


def test_load_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ParamError, match="not valid JSON"):
        load_input(str(bad))
    arr = tmp_path / "arr.json"
    arr.write_text("[1]")
    with pytest.raises(ParamError, match="expected a JSON object"):
        load_input(str(arr))
    with pytest.raises(ParamError, match=r"missing\.json"):
        load_input(str(tmp_path / "missing.json"))


def test_parse_time_relative_and_iso() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert parse_time("2h", option="--since", now=now) == "2026-11-21T10:00:00+00:00"
    assert parse_time("30m", option="--since", now=now) == "2026-11-21T11:30:00+00:00"
    assert parse_time("1w", option="--since", now=now) == "2026-11-14T12:00:00+00:00"
    assert parse_time("2026-11-20T08:00:00Z", option="--since") == "2026-11-20T08:00:00+00:00"
    # Naive times are UTC, not the machine's zone.
    assert parse_time("2026-11-20 08:00", option="--since") == "2026-11-20T08:00:00+00:00"
    assert parse_time(None, option="--since") is None
    with pytest.raises(ParamError, match="--until 'soon'"):
        parse_time("soon", option="--until")
