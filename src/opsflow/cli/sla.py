"""``opsflow sla watchlist|escalate|note``: the SLA watchlist and supervisors' actions.

Clients of the API (``GET /sla/watchlist``, ``POST /sla/requests/{id}/escalate`` and
``/notes``), so roles are checked and every action audited there: an operator's ``escalate``
is refused with the API's 403 message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from opsflow.cli.client import ApiClient, CliError

sla_app = typer.Typer(
    help="The SLA watchlist; escalate a request, add a note.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _client(ctx: typer.Context) -> ApiClient:
    state = ctx.find_root().obj
    if state is None or not hasattr(state, "client"):
        raise CliError("no CLI state (run through the opsflow command)")
    client: ApiClient = state.client()
    return client


def _wants_json(ctx: typer.Context, flag: bool) -> bool:
    state = ctx.find_root().obj
    return flag or bool(getattr(state, "json", False))


def _call(ctx: typer.Context, method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client(ctx) as api:
            response = api.request(method, path, **kwargs)
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    return response.json() if response.content else None


def _left(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    return f"{sign}{s // 3600}h{(s % 3600) // 60:02d}m"


@sla_app.command("watchlist")
def watchlist(
    ctx: typer.Context,
    department: Annotated[
        str | None, typer.Option("--department", "-d", help="Department code.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Open requests due within 24 hours (overdue ones marked breached), soonest first."""
    body = _call(
        ctx,
        "GET",
        "/sla/watchlist",
        params={"department": department, "limit": limit, "offset": offset},
    )
    if _wants_json(ctx, as_json):
        typer.echo(json.dumps(body))
        return
    table = Table(title=f"SLA watchlist: {body['total']} request(s)")
    for col in ("request", "reference", "department", "assignee", "priority", "state", "left"):
        table.add_column(col)
    for item in body["items"]:
        state = item["state"]
        style = "red" if item["breached"] else ("yellow" if state == "escalated" else "")
        table.add_row(
            str(item["request_id"]),
            item.get("reference") or "",
            item.get("department") or "",
            item.get("assignee") or "",
            item.get("priority") or "",
            f"[{style}]{state}[/{style}]" if style else state,
            _left(int(item["seconds_left"])),
        )
    Console(highlight=False).print(table)


@sla_app.command("escalate")
def escalate(
    ctx: typer.Context,
    request_id: Annotated[int, typer.Argument(min=1, help="The request's id.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (3 to 500 characters).")],
) -> None:
    """Escalate a request (supervisors): mail + SMS to supervisors, priority critical."""
    _call(ctx, "POST", f"/sla/requests/{request_id}/escalate", json_body={"reason": reason})
    Console(highlight=False).print(f"escalation of request {request_id} sent")


@sla_app.command("note")
def note(
    ctx: typer.Context,
    request_id: Annotated[int, typer.Argument(min=1, help="The request's id.")],
    text: Annotated[str, typer.Option("--text", "-t", help="The follow-up note.")],
) -> None:
    """Add a follow-up note to the request timeline (you are its author)."""
    _call(ctx, "POST", f"/sla/requests/{request_id}/notes", json_body={"text": text})
    Console(highlight=False).print(f"note on request {request_id} sent")
