"""Rich rendering of the CLI's answers for people (``--json`` bypasses all of this).

Every function takes the console to print on, so tests and the ``--json`` path stay separate
from the pretty output, and the API's shapes are read defensively (``.get``): a field the API
adds later never breaks a table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.json import JSON
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "RUNNING": "cyan",
    "COMPLETED": "green",
    "FAILED": "red",
    "CANCELED": "yellow",
    "TERMINATED": "red",
    "TIMED_OUT": "red",
    "CONTINUED_AS_NEW": "blue",
}


def to_json(value: Any) -> str:
    """Serialise for ``--json`` (dates as ISO text, stable key order as given)."""
    return json.dumps(value, indent=2, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def status_text(status: Any) -> Text:
    """Return a run status coloured by outcome."""
    # The runs read model stores lower case, Temporal reports upper case: show one spelling.
    text = str(status or "-").upper()
    return Text(text, style=STATUS_STYLES.get(text, ""))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, default=_json_default, ensure_ascii=False)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def short_time(value: Any) -> str:
    """Shorten an ISO timestamp to seconds (``2026-11-21 08:00:01+00:00``)."""
    if not value:
        return "-"
    text = str(value)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat(
            sep=" ", timespec="seconds"
        )
    except ValueError:
        return text


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def compact_time(value: Any) -> str:
    """Format a timestamp as ``MM-DD HH:MM:SS`` in UTC (tables are narrow)."""
    moment = _parse_time(value) if value else None
    if moment is None:
        return _cell(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%m-%d %H:%M:%S")


def duration(start: Any, end: Any) -> str:
    """Format the time between two timestamps (``-`` while still open)."""
    began, ended = _parse_time(start) if start else None, _parse_time(end) if end else None
    if began is None or ended is None:
        return "-"
    seconds = max((ended - began).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def first(row: Mapping[str, Any], *keys: str) -> Any:
    """Return the first non-empty value among ``keys`` (API and read-model names differ)."""
    for key in keys:
        value = row.get(key)
        if value not in (None, ""):
            return value
    return None


def runbooks_table(console: Console, runbooks: Sequence[Mapping[str, Any]]) -> None:
    """Print the catalog: name, title, trigger, start roles, signals with their roles."""
    table = Table(title="Runbooks", show_lines=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("title")
    table.add_column("trigger")
    table.add_column("start roles")
    table.add_column("signals")
    for spec in runbooks:
        signals = spec.get("signals") or {}
        signal_text = (
            "; ".join(
                f"{name} ({_cell((info or {}).get('roles'))})" for name, info in signals.items()
            )
            if isinstance(signals, dict)
            else _cell(signals)
        )
        table.add_row(
            _cell(spec.get("name")),
            _cell(spec.get("title")),
            _cell(spec.get("trigger")),
            _cell(spec.get("start_roles")),
            signal_text or "-",
        )
    console.print(table)


def runs_table(console: Console, page: Mapping[str, Any]) -> None:
    """Print a page of ``GET /runs`` and where it sits in the total."""
    items: list[Mapping[str, Any]] = list(page.get("items") or [])
    # Narrow terminals: light borders, and the tenant column only when some run has one.
    table = Table(title="Runs", box=box.SIMPLE_HEAD, pad_edge=False)
    with_tenant = any(row.get("tenant") not in (None, "", "-") for row in items)
    # The id is what an operator copies into `opsflow status`: fold it, never cut it short.
    table.add_column("id", style="bold", overflow="fold", min_width=20)
    table.add_column("runbook", overflow="ellipsis", max_width=20)
    table.add_column("status", no_wrap=True)
    table.add_column("actor", overflow="ellipsis", max_width=24)
    if with_tenant:
        table.add_column("tenant", overflow="ellipsis", max_width=12)
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("took", no_wrap=True, justify="right")
    for row in items:
        cells: list[str | Text] = [
            _cell(first(row, "id", "workflow_id")),
            _cell(row.get("runbook")),
            status_text(row.get("status")),
            _cell(row.get("actor")),
        ]
        if with_tenant:
            cells.append(_cell(row.get("tenant")))
        cells += [
            compact_time(row.get("started_at")),
            duration(row.get("started_at"), first(row, "closed_at", "ended_at")),
        ]
        table.add_row(*cells)
    console.print(table)
    total = page.get("total")
    offset = int(page.get("offset") or 0)
    if items:
        console.print(f"{offset + 1}-{offset + len(items)} of {total}", style="dim")
    else:
        console.print(f"no runs (total {total})", style="dim")


def progress_text(progress: Mapping[str, Any] | None) -> str:
    """``step (done/total): message`` from a run's progress, or ``-``."""
    if not progress:
        return "-"
    step = str(progress.get("step") or "")
    done, total = progress.get("done"), progress.get("total")
    counts = f" ({done}/{total})" if total else ""
    message = progress.get("message")
    return f"{step}{counts}" + (f": {message}" if message else "")


def run_detail(console: Console, run: Mapping[str, Any]) -> None:
    """One run: identity, status, times, progress, link, then input and result or failure."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", _cell(first(run, "id", "workflow_id")))
    table.add_row("run id", _cell(run.get("run_id")))
    table.add_row("runbook", _cell(run.get("runbook")))
    table.add_row("status", status_text(run.get("status")))
    table.add_row("actor", _cell(run.get("actor")))
    table.add_row("tenant", _cell(run.get("tenant")))
    table.add_row("started", short_time(run.get("started_at")))
    table.add_row("closed", short_time(first(run, "closed_at", "ended_at")))
    table.add_row("progress", progress_text(run.get("progress")))
    console.print(table)
    if run.get("ui_url"):
        # Outside the table and never wrapped, so terminals keep the link clickable.
        console.print(f"web ui    {run.get('ui_url')}", soft_wrap=True)
    if run.get("input") not in (None, {}):
        console.print(Text("input", style="bold"))
        print_json(console, run.get("input"))
    outcome(console, run)


def outcome(console: Console, run: Mapping[str, Any]) -> None:
    """Print the result of a finished run, or its failure."""
    failure = run.get("failure")
    if failure:
        console.print(Text("failure", style="bold red"))
        if isinstance(failure, str):
            console.print(Text(failure))
        else:
            print_json(console, failure)
    elif run.get("result") is not None:
        console.print(Text("result", style="bold"))
        print_json(console, run.get("result"))


def print_json(console: Console, value: Any) -> None:
    """Pretty, highlighted JSON for people."""
    console.print(JSON(json.dumps(value, default=_json_default, ensure_ascii=False)))


def _is_simple(value: Any) -> bool:
    if isinstance(value, dict):
        return False
    if isinstance(value, list | tuple):
        return all(not isinstance(v, dict | list | tuple) for v in value)
    return True


def key_values(
    console: Console, title: str, row: Mapping[str, Any], *, skip_nested: bool = False
) -> None:
    """Print a two-column table of a record's fields.

    Args:
        console: Where to print.
        title: The table's title.
        row: The record.
        skip_nested: Leave out nested objects (named in a note pointing at ``--json``)
            instead of printing them as compact JSON.

    """
    table = Table(title=title, show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    left_out: list[str] = []
    for key, value in row.items():
        if skip_nested and not _is_simple(value):
            left_out.append(str(key))
            continue
        table.add_row(str(key), _cell(value))
    console.print(table)
    if left_out:
        console.print(f"(details in --json: {', '.join(left_out)})", style="dim")


def generic_table(
    console: Console,
    title: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Iterable[str] | None = None,
) -> None:
    """Print records whose keys are not known in advance (first keys seen first)."""
    names: list[str] = list(columns or [])
    if not names:
        for row in rows:
            for key in row:
                if key not in names:
                    names.append(key)
    table = Table(title=title)
    for name in names:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                short_time(row.get(name)) if name.endswith("_at") else _cell(row.get(name))
                for name in names
            )
        )
    console.print(table)


# The alert fields an on-call person reads first; the rest is in --json.
ALERT_COLUMNS = ("rule", "message", "value", "threshold", "raised_at")


def health_report(console: Console, report: Mapping[str, Any]) -> None:
    """``GET /health/report``: the latest check and the open alerts."""
    latest = report.get("latest")
    if latest:
        key_values(console, "Latest health check", latest, skip_nested=True)
    else:
        console.print("no health check has run yet", style="yellow")
    alerts: list[Mapping[str, Any]] = list(report.get("open_alerts") or [])
    if alerts:
        present = {key for alert in alerts for key in alert}
        columns = [c for c in ALERT_COLUMNS if c in present] or None
        generic_table(console, f"Open alerts ({len(alerts)})", alerts, columns)
    else:
        console.print("no open alerts", style="green")


AUDIT_COLUMNS = ("id", "occurred_at", "actor", "action", "target", "outcome")


def audit_table(console: Console, items: Sequence[Mapping[str, Any]]) -> None:
    """Audit events as a table (details and hashes are in ``--json``)."""
    table = Table(title="Audit events")
    for name in AUDIT_COLUMNS:
        table.add_column(name, overflow="fold")
    for row in items:
        table.add_row(
            _cell(row.get("id")),
            short_time(row.get("occurred_at")),
            _cell(row.get("actor")),
            _cell(row.get("action")),
            _cell(row.get("target")),
            _cell(row.get("outcome")),
        )
    console.print(table)


def audit_line(row: Mapping[str, Any]) -> str:
    """One audit event on one line (``--follow`` output)."""
    return " ".join(
        [
            f"#{_cell(row.get('id'))}",
            short_time(row.get("occurred_at")),
            _cell(row.get("actor")),
            _cell(row.get("action")),
            _cell(row.get("target")),
            _cell(row.get("outcome")),
        ]
    )


def tokens_table(console: Console, tokens: Sequence[Mapping[str, Any]]) -> None:
    """Print API tokens (never their hashes)."""
    table = Table(title="API tokens")
    for name in ("name", "role", "state", "created", "created by", "last used", "revoked"):
        table.add_column(name)
    for tok in tokens:
        revoked = tok.get("revoked_at")
        table.add_row(
            _cell(tok.get("name")),
            _cell(tok.get("role")),
            Text("revoked", style="red") if revoked else Text("active", style="green"),
            short_time(tok.get("created_at")),
            _cell(tok.get("created_by")),
            short_time(tok.get("last_used_at")),
            short_time(revoked),
        )
    console.print(table)
