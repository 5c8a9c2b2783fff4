"""Reading columns from psycopg dict rows with a type the checker accepts."""

from __future__ import annotations

from typing import Any


def col(row: object, name: str) -> Any:
    """Return column ``name`` of a dict row (the pools are opened with ``dict_row``)."""
    if isinstance(row, dict):
        return row[name]
    raise TypeError(f"expected a dict row, got {type(row).__name__}")
