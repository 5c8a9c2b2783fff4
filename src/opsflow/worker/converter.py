"""opsflow's Temporal data converter: the SDK's JSON payloads, dataclasses decoded faster.

Payloads are exactly the SDK default's (what a bare client writes and reads); only decoding
into a dataclass differs. The SDK reads a dataclass's field types with
``typing.get_type_hints`` on every decode, and with postponed annotations (``from __future__
import annotations``, the house style) that evaluates each field's annotation string again:
about 3 % of the worker's CPU on the SLA bench, where every escalation decodes a signal, a
local activity's input (with its nested watchlist row and notices) and its result. Here the
field types of each class are read once.

The decoding follows the SDK's dataclass branch of ``value_to_type`` (fields missing from the
JSON are left to the class's defaults, unknown keys are ignored, ``init=False`` fields are set
afterwards, a field that does not convert raises ``TypeError`` naming it), and every field's
value still goes through the SDK's ``value_to_type``. Classes are held weakly: a sandboxed
workflow's re-imported copy of a class is dropped with it.
"""

from __future__ import annotations

import dataclasses
import typing
import weakref
from typing import Any

from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    value_to_type,
)

# (name, type, init) of each field of a dataclass, in declaration order.
_Plan = tuple[tuple[str, Any, bool], ...]
_plans: weakref.WeakKeyDictionary[type, _Plan] = weakref.WeakKeyDictionary()


def _plan(cls: type) -> _Plan:
    plan = _plans.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = tuple((f.name, hints[f.name], f.init) for f in dataclasses.fields(cls))
        _plans[cls] = plan
    return plan


class DataclassTypeConverter(JSONTypeConverter):
    """Decode JSON objects into dataclasses with field types read once per class."""

    def __init__(self) -> None:
        self._converters: list[JSONTypeConverter] = [self]

    def to_typed_value(self, hint: type, value: Any) -> Any:
        """Build ``hint`` from ``value`` if it is a dataclass and a dict; else Unhandled."""
        if not (
            isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, dict)
        ):
            return JSONTypeConverter.Unhandled
        init_values: dict[str, Any] = {}
        later: dict[str, Any] = {}
        for name, field_hint, init in _plan(hint):
            if name not in value:
                continue  # the class's default, or its own error for a required field
            try:
                converted = value_to_type(field_hint, value[name], self._converters)
            except Exception as err:
                raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
            (init_values if init else later)[name] = converted
        obj = hint(**init_values)
        for name, converted in later.items():
            object.__setattr__(obj, name, converted)  # frozen dataclasses too
        return obj


class OpsflowPayloadConverter(CompositePayloadConverter):
    """The SDK's default payload converters, with dataclasses decoded by the cached plan."""

    def __init__(self) -> None:
        """Build the SDK's default chain; its JSON converter gets the dataclass decoder."""
        super().__init__(
            *(
                JSONPlainPayloadConverter(custom_type_converters=[DataclassTypeConverter()])
                if isinstance(c, JSONPlainPayloadConverter)
                else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


DATA_CONVERTER = dataclasses.replace(
    DataConverter.default, payload_converter_class=OpsflowPayloadConverter
)
