"""The ``opsflow`` command (Typer + Rich).

Runbook commands (``runbooks``, ``run``, ``status``, ``runs``, ``signal``, ``update``,
``query``, ``cancel``, ``health``, ``audit tail``) are clients of the HTTP API at
``OPSFLOW_URL`` with the bearer token ``OPSFLOW_TOKEN`` (both also read from ``.opsflow/env``,
which ``make dev`` writes). Admin commands that must work before any token exists talk to the
database directly (``token ...``, ``audit verify``, ``db upgrade``, ``seed``), and process
commands start a part of the platform (``dev``, ``worker``, ``api``, ``schedules sync``).

Exit codes: 0 success; 1 the API or the database refused (its message on stderr), a run that
did not complete, or a broken audit chain; 2 a usage error (bad ``--param``); 3 the API is
unreachable; 130 interrupted. Output for people goes through Rich; ``--json`` prints plain
JSON on stdout and nothing else there. The token is never printed, except by
``token create``, whose only stdout line is the new token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import getpass
import inspect
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from opsflow.cli import render
from opsflow.cli.audit_export import audit_export_app
from opsflow.cli.client import ApiClient, ApiError, ApiUnreachable, CliError
from opsflow.cli.params import load_input, parse_params, parse_time
from opsflow.cli.sla import sla_app
from opsflow.shared.roles import Role

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from opsflow.config import Settings

P = ParamSpec("P")
T = TypeVar("T")

# A run is followed until its status leaves these (CONTINUED_AS_NEW: the same workflow id
# goes on in a new run, which GET /runs/{id} reports next).
OPEN_STATUSES = frozenset({"RUNNING", "CONTINUED_AS_NEW"})
# How long a run may be unreadable right after its start, or the API briefly away, before
# following gives up.
FOLLOW_GRACE_SECONDS = 15.0


@dataclass
class CliState:
    """What every command needs, built by the root callback (tests pass their own).

    Attributes:
        url: ``--url`` override of ``OPSFLOW_URL``.
        token: ``--token`` override of ``OPSFLOW_TOKEN``.
        json: The global ``--json``.
        settings: Settings to use instead of loading them (tests).
        transport: An ``httpx`` transport for the API client (tests inject a mock).
        poll_interval: Seconds between polls when following a run.
        hard_exit: How process commands end (``os._exit``; tests replace it).
        configure_logs: Route library logs to stderr at WARNING (tests turn it off, since
            logging is process-wide).

    """

    url: str | None = None
    token: str | None = None
    json: bool = False
    settings: Settings | None = None
    transport: httpx.BaseTransport | None = None
    poll_interval: float = 0.5
    hard_exit: Callable[[int], Any] = field(default=os._exit)
    configure_logs: bool = True

    def get_settings(self) -> Settings:
        """Load settings once (env, then ``.opsflow/env``), with the CLI overrides applied."""
        if self.settings is None:
            from opsflow.config import load_settings

            try:
                self.settings = load_settings()
            except Exception as exc:  # pydantic ValidationError: a bad env value
                raise CliError(
                    f"invalid settings in the environment or .opsflow/env: {exc}"
                ) from exc
        if self.configure_logs:
            self.configure_logs = False
            _configure_logging(self.settings)
        return self.settings

    def api_url(self) -> str:
        """Return the API's base URL (``--url`` beats ``OPSFLOW_URL``)."""
        return self.url or self.get_settings().opsflow_url

    def client(self) -> ApiClient:
        """Return a client of the API with the configured URL and token."""
        settings = self.get_settings()
        token = self.token
        if token is None and settings.opsflow_token is not None:
            token = settings.opsflow_token.get_secret_value()
        return ApiClient(self.api_url(), token or None, transport=self.transport)


def _configure_logging(settings: Settings) -> None:
    # The CLI's own output is the point; library logs only matter from WARNING up, on stderr.
    try:
        from opsflow.logs import configure_logging
    except ImportError:
        return
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}), "cli")


def _out() -> Console:
    # Piped into a file or another program, Rich would crop tables at 80 columns; give them
    # room unless COLUMNS says otherwise.
    width = None
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        width = 160
    return Console(highlight=False, width=width)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def _wants_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or _state(ctx).json


def _echo_json(value: Any) -> None:
    typer.echo(render.to_json(value))


def _fail(message: str, code: int = 1) -> NoReturn:
    _err().print(Text(f"error: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _report(exc: CliError) -> NoReturn:
    if isinstance(exc, ApiError):
        message = f"{exc.status_code}: {exc.message}"
        if exc.status_code == 401:
            message += (
                "\n  Set OPSFLOW_TOKEN (or pass --token); an admin creates one with "
                "`opsflow token create --role ROLE --name NAME`."
            )
        _fail(message, exc.exit_code)
    _fail(str(exc), exc.exit_code)


def handle_errors(func: Callable[P, T]) -> Callable[P, T]:
    """Turn the CLI's expected errors into one message on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except CliError as exc:
            _report(exc)

    return wrapper


app = typer.Typer(
    name="opsflow",
    help="Operate opsflow runbooks: start, follow, signal and inspect runs; admin tasks.",
    no_args_is_help=True,
    # Pretty tracebacks print local variables, which may hold tokens or database URLs.
    pretty_exceptions_enable=False,
    add_completion=False,
)
token_app = typer.Typer(
    help="Create, list and revoke API tokens (direct database access).", no_args_is_help=True
)
audit_app = typer.Typer(help="Read and verify the hash-chained audit log.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
schedules_app = typer.Typer(help="Temporal Schedules of the catalog.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(db_app, name="db")
app.add_typer(schedules_app, name="schedules")
app.add_typer(audit_export_app, name="audit-export")
app.add_typer(sla_app, name="sla")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ParamOpt = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", help="key=value, typed by the input schema (repeatable)."),
]
InputOpt = Annotated[
    str | None,
    typer.Option("--input", "-i", help="JSON file with the input object ('-' for stdin)."),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"opsflow {version('opsflow')}")
        except PackageNotFoundError:
            typer.echo("opsflow (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="API base URL (default: OPSFLOW_URL).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="Bearer token (default: OPSFLOW_TOKEN).", show_default=False),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="JSON output for every command.")
    ] = False,
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Operate opsflow runbooks through its API (OPSFLOW_URL, OPSFLOW_TOKEN)."""
    state = _state(ctx)
    if url is not None:
        state.url = url
    if token is not None:
        state.token = token
    state.json = state.json or json_out


# --- catalog and runs ----------------------------------------------------------------------


@app.command("runbooks")
@handle_errors
def runbooks_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List the runbooks: name, title, trigger, who may start them, their signals."""
    with _state(ctx).client() as api:
        catalog = api.runbooks()
    if _wants_json(ctx, json_out):
        _echo_json(catalog)
    else:
        render.runbooks_table(_out(), catalog)


def _unknown_runbook(api: ApiClient, name: str) -> NoReturn:
    names = ", ".join(sorted(str(s.get("name")) for s in api.runbooks()))
    raise CliError(f"no runbook named {name!r}; runbooks: {names}")


@app.command("run")
@handle_errors
def run_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Runbook name (see `opsflow runbooks`).")],
    param: ParamOpt = None,
    input_file: InputOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once started.")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeat with the same key to get the same run."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a runbook and follow it to its end (exit 0 only if it completed)."""
    state = _state(ctx)
    as_json = _wants_json(ctx, json_out)
    err = _err()
    with state.client() as api:
        body = load_input(input_file)
        if param:
            spec = api.runbook(name)
            if spec is None:
                _unknown_runbook(api, name)
            body.update(parse_params(param, spec.get("input_schema"), what=f"runbook {name!r}"))
        started, created = api.start_run(name, body, idempotency_key=idempotency_key)
        run_id = str(started.get("id"))
        ui_url = started.get("ui_url")
        if not created:
            err.print(f"a run with the same key already exists: {run_id}", style="yellow")
        if detach:
            if as_json:
                _echo_json(started)
            else:
                typer.echo(run_id)
                if ui_url:
                    err.print(f"web ui: {ui_url}", soft_wrap=True)
            return
        if not as_json:
            err.print(f"started {run_id}" + (f"  ({ui_url})" if ui_url else ""), soft_wrap=True)
        final = follow_run(api, run_id, state.poll_interval, err if not as_json else None)
    status = str(final.get("status"))
    if as_json:
        _echo_json(final)
    else:
        out = _out()
        out.print(Text.assemble("status: ", render.status_text(status)))
        render.outcome(out, final)
        link = final.get("ui_url") or ui_url
        if link:
            out.print(f"web ui: {link}", soft_wrap=True)
    raise typer.Exit(0 if status == "COMPLETED" else 1)


def follow_run(
    api: ApiClient, run_id: str, interval: float, console: Console | None
) -> dict[str, Any]:
    """Poll ``GET /runs/{id}`` until the run ends, drawing a live progress bar on ``console``.

    Args:
        api: The API client.
        run_id: The workflow id.
        interval: Seconds between polls.
        console: Where the progress bar goes (stderr), or None for none (``--json``).

    Returns:
        The run as the API last reported it (status no longer RUNNING).

    Raises:
        ApiError: The run cannot be read (after a short grace for transient errors).

    """
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=False,
    )
    failing_since: float | None = None
    try:
        with progress:
            task = progress.add_task("starting", total=None)
            while True:
                try:
                    run = api.get_run(run_id)
                    failing_since = None
                except (ApiError, ApiUnreachable) as exc:
                    # Right after a start the read model may lag (404), and an API restart is
                    # brief; anything else, or a long outage, is reported.
                    transient = isinstance(exc, ApiUnreachable) or exc.status_code in {
                        404,
                        502,
                        503,
                        504,
                    }
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if not transient or now - failing_since > FOLLOW_GRACE_SECONDS:
                        raise
                    time.sleep(max(interval, 0.1))
                    continue
                _update_bar(progress, task, run)
                if str(run.get("status")) not in OPEN_STATUSES:
                    return run
                time.sleep(interval)
    except KeyboardInterrupt:
        _err().print(
            f"stopped following; the run goes on. See it with: opsflow status {run_id}",
            style="yellow",
        )
        raise typer.Exit(130) from None


def _update_bar(progress: Progress, task: TaskID, run: dict[str, Any]) -> None:
    info = run.get("progress") or {}
    total = info.get("total") or None
    done = info.get("done") or 0
    step = str(info.get("step") or run.get("status") or "")
    message = info.get("message")
    description = f"{step}: {message}" if message else step
    if str(run.get("status")) == "COMPLETED":
        # A finished run's bar is full, even when its last progress report was not.
        known = total or next((t.total for t in progress.tasks if t.id == task), None)
        done = known if known else done
    progress.update(task, total=total, completed=done, description=description)


@app.command("status")
@handle_errors
def status_cmd(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id of the run.")],
    json_out: JsonOpt = False,
) -> None:
    """Show a run: status, progress, input, result or failure, Web UI link."""
    with _state(ctx).client() as api:
        run = api.get_run(run_id)
    if _wants_json(ctx, json_out):
        _echo_json(run)
    else:
        render.run_detail(_out(), run)


class Status(StrEnum):
    """Run statuses (as the API reports them)."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"
    TIMED_OUT = "TIMED_OUT"


TimeHelp = "ISO time or an age like 30m, 2h, 7d."


@app.command("runs")
@handle_errors
def runs_cmd(
    ctx: typer.Context,
    runbook: Annotated[str | None, typer.Option(help="Only this runbook.")] = None,
    status: Annotated[
        Status | None, typer.Option(help="Only runs in this status.", case_sensitive=False)
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only runs started by this actor.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only runs for this tenant.")] = None,
    since: Annotated[str | None, typer.Option(help=f"Started at or after. {TimeHelp}")] = None,
    until: Annotated[str | None, typer.Option(help=f"Started before. {TimeHelp}")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Page size.")] = None,
    offset: Annotated[int | None, typer.Option(min=0, help="Rows to skip.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List runs, newest first, filtered and paginated."""
    filters = {
        "runbook": runbook,
        # The runs read model stores statuses in lower case and the filter is exact.
        "status": status.value.lower() if status else None,
        "actor": actor,
        "tenant": tenant,
        "since": parse_time(since, option="--since"),
        "until": parse_time(until, option="--until"),
        "limit": limit,
        "offset": offset,
    }
    with _state(ctx).client() as api:
        page = api.list_runs(**filters)
    if _wants_json(ctx, json_out):
        _echo_json(page)
    else:
        render.runs_table(_out(), page)


def _action_schema(
    api: ApiClient, run_id: str, kind: str, name: str
) -> tuple[bool, dict[str, Any] | None]:
    """Find a signal's or update's argument schema through the run's runbook.

    Returns:
        Whether the catalog could be read, and the schema (None: no argument, or unknown).

    Raises:
        ApiError: The run does not exist.
        CliError: The runbook has no such signal or update.

    """
    try:
        run = api.get_run(run_id)
        spec = api.runbook(str(run.get("runbook")))
    except ApiError as exc:
        if exc.status_code == 404:
            raise
        # A caller allowed to signal but not to read may still act; the API checks the rest.
        return False, None
    if spec is None:
        return False, None
    actions = spec.get(kind) or {}
    if name not in actions:
        known = ", ".join(sorted(actions)) or "none"
        noun = "signal" if kind == "signals" else "update"
        raise CliError(f"runbook {spec.get('name')!r} has no {noun} {name!r}; its {kind}: {known}")
    info = actions[name] or {}
    schema = info.get("schema") if isinstance(info, dict) else None
    return True, schema if isinstance(schema, dict) else None


def _action_body(
    api: ApiClient,
    run_id: str,
    kind: str,
    name: str,
    param: list[str] | None,
    input_file: str | None,
) -> tuple[Any, bool]:
    known, schema = _action_schema(api, run_id, kind, name)
    body = load_input(input_file)
    noun = "signal" if kind == "signals" else "update"
    if param:
        body.update(parse_params(param, schema, what=f"{noun} {name!r}"))
    # Send an object whenever the action takes one (defaults fill it), else no body at all.
    has_arg = bool(body) or (known and schema is not None)
    return (body if has_arg else None), has_arg


@app.command("signal")
@handle_errors
def signal_cmd(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id of the run.")],
    name: Annotated[str, typer.Argument(help="Signal name.")],
    param: ParamOpt = None,
    input_file: InputOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send a signal to a run (role-checked by the API)."""
    with _state(ctx).client() as api:
        body, has_arg = _action_body(api, run_id, "signals", name, param, input_file)
        answer = api.signal(run_id, name, body, has_arg=has_arg)
    if _wants_json(ctx, json_out):
        _echo_json(answer)
    else:
        _out().print(f"signal {name!r} sent to {run_id}", soft_wrap=True)


@app.command("update")
@handle_errors
def update_cmd(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id of the run.")],
    name: Annotated[str, typer.Argument(help="Update name.")],
    param: ParamOpt = None,
    input_file: InputOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Send an update to a run and print its result (or its validation error)."""
    with _state(ctx).client() as api:
        body, has_arg = _action_body(api, run_id, "updates", name, param, input_file)
        answer = api.update(run_id, name, body, has_arg=has_arg)
    if _wants_json(ctx, json_out):
        _echo_json(answer)
    else:
        out = _out()
        out.print(f"update {name!r} accepted by {run_id}", soft_wrap=True)
        if answer.get("result") is not None:
            render.print_json(out, answer.get("result"))


@app.command("query")
@handle_errors
def query_cmd(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id of the run.")],
    name: Annotated[str, typer.Argument(help="Query name (e.g. progress, status).")],
    json_out: JsonOpt = False,
) -> None:
    """Ask a run a query and print the answer."""
    with _state(ctx).client() as api:
        answer = api.query(run_id, name)
    if _wants_json(ctx, json_out):
        _echo_json(answer)
    else:
        render.print_json(_out(), answer.get("result"))


@app.command("cancel")
@handle_errors
def cancel_cmd(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(metavar="ID", help="Workflow id of the run.")],
    json_out: JsonOpt = False,
) -> None:
    """Ask a run to cancel (it cleans up, then ends as CANCELED)."""
    with _state(ctx).client() as api:
        answer = api.cancel(run_id)
    if _wants_json(ctx, json_out):
        _echo_json(answer)
    else:
        _out().print(f"cancel requested for {run_id}", soft_wrap=True)


@app.command("health")
@handle_errors
def health_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Show the latest health check and the open alerts."""
    with _state(ctx).client() as api:
        report = api.health_report()
    if _wants_json(ctx, json_out):
        _echo_json(report)
    else:
        render.health_report(_out(), report)


# --- audit ---------------------------------------------------------------------------------


@audit_app.command("tail")
@handle_errors
def audit_tail_cmd(
    ctx: typer.Context,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    target: Annotated[str | None, typer.Option(help="Only this target.")] = None,
    since: Annotated[str | None, typer.Option(help=f"At or after. {TimeHelp}")] = None,
    until: Annotated[str | None, typer.Option(help=f"Before. {TimeHelp}")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Events per request.")] = 50,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Read audit events (auditor role), optionally following new ones."""
    state = _state(ctx)
    as_json = _wants_json(ctx, json_out)
    filters: dict[str, Any] = {
        "actor": actor,
        "action": action,
        "target": target,
        "since": parse_time(since, option="--since"),
        "until": parse_time(until, option="--until"),
        "limit": limit,
    }
    with state.client() as api:
        page = api.audit(**filters)
        items: list[dict[str, Any]] = list(page.get("items") or [])
        if not follow:
            if as_json:
                _echo_json(page)
            else:
                render.audit_table(_out(), items)
            return
        out = _out()
        after_id = _last_id(page, items, None)
        try:
            while True:
                for row in items:
                    if as_json:
                        typer.echo(render.to_json(row).replace("\n", " "))
                    else:
                        out.print(Text(render.audit_line(row)), soft_wrap=True)
                sys.stdout.flush()
                # A full page means more are waiting: fetch them before pausing.
                if len(items) < limit:
                    time.sleep(max(state.poll_interval * 2, 0.05))
                page = api.audit(**filters, after_id=after_id)
                items = list(page.get("items") or [])
                after_id = _last_id(page, items, after_id)
        except KeyboardInterrupt:
            return


def _last_id(page: dict[str, Any], items: list[dict[str, Any]], previous: int | None) -> int | None:
    ids = [int(row["id"]) for row in items if isinstance(row.get("id"), int)]
    candidates = [*ids, *([previous] if previous is not None else [])]
    nxt = page.get("next_after_id")
    if isinstance(nxt, int):
        candidates.append(nxt)
    return max(candidates) if candidates else None


def _run_async(coro: Awaitable[T]) -> T:
    async def _wrap() -> T:
        return await coro

    return asyncio.run(_wrap())


def _db_error(what: str, exc: Exception) -> CliError:
    from opsflow.config import redact_url

    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CliError(f"{what}: {redact_url(first_line)}")


@contextlib.contextmanager
def _database_errors(what: str) -> Iterator[None]:
    """Report database failures (unreachable, missing table) as one clear line."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise _db_error(what, exc) from exc
    except OSError as exc:
        raise _db_error(what, exc) from exc


def _optional(module: str, what: str) -> Any:
    """Import a part of the platform lazily, explaining clearly when it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CliError(f"{what} is not available in this installation ({exc})") from exc


@audit_app.command("verify")
@handle_errors
def audit_verify_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Recompute the audit hash chain (direct database access); non-zero if broken."""
    settings = _state(ctx).get_settings()
    audit = _optional("opsflow.adapters.audit", "the audit adapter")

    async def verify() -> Any:
        pool = await _open_pool(settings)
        try:
            async with pool.connection() as conn:
                return await audit.verify_chain(conn)
        finally:
            await pool.close()

    with _database_errors("cannot verify the audit chain"):
        result = _run_async(verify())
    if _wants_json(ctx, json_out):
        _echo_json(_plain(result))
    elif result.ok:
        _out().print(f"audit chain intact: {result.rows_checked} rows checked", style="green")
    if not result.ok:
        _fail(
            f"audit chain broken at row id {result.first_bad_id}: {result.reason} "
            f"({result.rows_checked} rows before it are intact)"
        )


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, StrEnum):
        return value.value
    return value


# --- tokens --------------------------------------------------------------------------------


async def _open_pool(settings: Settings) -> AsyncConnectionPool:
    import psycopg

    from opsflow.config import redact_url

    postgres = _optional("opsflow.adapters.postgres", "the PostgreSQL adapter")
    url = settings.database_url.get_secret_value()
    # One quick probe first: a pool retries an unreachable server for its whole timeout,
    # logging each attempt, where an operator wants one clear line at once.
    try:
        probe = await psycopg.AsyncConnection.connect(postgres.libpq_url(url), connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(
            f"cannot connect to the opsflow database at {redact_url(url)}: {reason}. "
            "Is DATABASE_URL right (or is `make dev` running)?"
        ) from exc
    await probe.close()
    pool: AsyncConnectionPool = await postgres.open_pool(
        url, name="cli", min_size=1, max_size=2, timeout=10.0
    )
    return pool


def _cli_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def _with_pool(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        pool = await _open_pool(settings)
        try:
            return await action(pool)
        finally:
            await pool.close()

    return _run_async(go())


@token_app.command("create")
@handle_errors
def token_create_cmd(
    ctx: typer.Context,
    role: Annotated[Role, typer.Option("--role", case_sensitive=False, help="The token's role.")],
    name: Annotated[str, typer.Option("--name", help="A unique name for the token.")],
) -> None:
    """Create an API token and print it alone on stdout (shown once, stored hashed)."""
    settings = _state(ctx).get_settings()
    tokens = _optional("opsflow.adapters.tokens", "the token adapter")
    actor = _cli_actor()

    async def create(pool: Any) -> str:
        return str(await tokens.create_token(pool, name=name, role=role, created_by=actor))

    try:
        with _database_errors("cannot create the token"):
            plaintext = _with_pool(settings, create)
    except tokens.TokenNameTaken as exc:
        raise CliError(f"a token named {name!r} already exists") from exc
    typer.echo(plaintext)
    _err().print(
        f"created token {name!r} with role {role.value}; it is shown only this once.",
        style="green",
        soft_wrap=True,
    )


@token_app.command("list")
@handle_errors
def token_list_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List API tokens (names, roles, state; never the tokens or their hashes)."""
    settings = _state(ctx).get_settings()
    tokens = _optional("opsflow.adapters.tokens", "the token adapter")

    async def fetch(pool: Any) -> list[Any]:
        return list(await tokens.list_tokens(pool))

    with _database_errors("cannot list tokens"):
        infos = _with_pool(settings, fetch)
    # Only the documented fields, so a hash added to TokenInfo later could never leak here.
    keep = ("id", "name", "role", "created_at", "created_by", "revoked_at", "last_used_at")
    rows = [{k: _plain(getattr(info, k, None)) for k in keep} for info in infos]
    if _wants_json(ctx, json_out):
        _echo_json(rows)
    else:
        render.tokens_table(_out(), rows)


@token_app.command("revoke")
@handle_errors
def token_revoke_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Name of the token to revoke.")],
) -> None:
    """Revoke an API token now (exit 1 if there is no active token of that name)."""
    settings = _state(ctx).get_settings()
    tokens = _optional("opsflow.adapters.tokens", "the token adapter")
    actor = _cli_actor()

    async def revoke(pool: Any) -> bool:
        return bool(await tokens.revoke_token(pool, name, actor=actor))

    with _database_errors("cannot revoke the token"):
        revoked = _with_pool(settings, revoke)
    if not revoked:
        _fail(f"no active token named {name!r}")
    _out().print(f"revoked token {name!r}", soft_wrap=True)


# --- database and seed ---------------------------------------------------------------------


class Which(StrEnum):
    """Which database to migrate."""

    OPSFLOW = "opsflow"
    APP = "app"
    ALL = "all"


@db_app.command("upgrade")
@handle_errors
def db_upgrade_cmd(
    ctx: typer.Context,
    which: Annotated[Which, typer.Option("--which", help="Which database.")] = Which.ALL,
) -> None:
    """Migrate the opsflow and/or app database to the latest revision (Alembic)."""
    settings = _state(ctx).get_settings()
    db = _optional("opsflow.db", "the migrations")
    try:
        db.upgrade(which.value, settings=settings)
    except Exception as exc:
        if os.environ.get("OPSFLOW_DEBUG"):
            raise
        raise _db_error(f"migrating {which.value} failed", exc) from exc
    _out().print(f"database {which.value}: at the latest revision", style="green")


@app.command("seed")
@handle_errors
def seed_cmd(
    ctx: typer.Context,
    requests: Annotated[int, typer.Option("--requests", min=1, help="Service requests.")],
    tenants: Annotated[int, typer.Option("--tenants", min=1, help="Tenants.")] = 40,
    random_seed: Annotated[int, typer.Option("--random-seed", help="For repeatability.")] = 42,
    reset: Annotated[
        bool, typer.Option("--reset", help="Empty the seeded tables first (else refused).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fill the app database with realistic data (COPY), printing rows/s."""
    settings = _state(ctx).get_settings()
    seed_module = _optional("opsflow.seed", "the seeder")
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err(),
    )
    tasks: dict[str, TaskID] = {}

    def on_progress(table: str, done: int, total: int) -> None:
        # One bar per table, added as the seeder reaches it.
        if table not in tasks:
            tasks[table] = progress.add_task(table, total=total or None)
        progress.update(tasks[table], completed=done, total=total or None)

    with progress:
        try:
            report = seed_module.seed(
                settings.target_database_url.get_secret_value(),
                requests=requests,
                tenants=tenants,
                random_seed=random_seed,
                progress=on_progress,
                reset=reset,
            )
        except Exception as exc:
            if os.environ.get("OPSFLOW_DEBUG"):
                raise
            raise _db_error("seeding failed", exc) from exc
    rows: dict[str, int] = dict(report.rows)
    summary = {
        "rows": rows,
        "total_rows": report.total_rows,
        "seconds": round(report.seconds, 3),
        "rows_per_second": round(report.rows_per_second, 1),
    }
    if _wants_json(ctx, json_out):
        _echo_json(summary)
        return
    out = _out()
    render.generic_table(
        out, "Seeded", [{"table": t, "rows": n} for t, n in rows.items()], ["table", "rows"]
    )
    out.print(
        f"{report.total_rows:,} rows in {report.seconds:.1f} s: "
        f"{report.rows_per_second:,.0f} rows/s",
        style="green",
    )


# --- processes -----------------------------------------------------------------------------


def _run_process(state: CliState, module: str, func: str, what: str) -> NoReturn:
    """Run a long-lived part of the platform, then leave with ``os._exit``.

    Processes that used a Temporal client can abort at interpreter exit (sdk-python issue 300,
    exit 134), so the exit code is handed straight to the OS after flushing the streams.
    """
    code = 1
    try:
        target = getattr(_optional(module, what), func)
        result = target()
        if inspect.isawaitable(result):
            result = _run_async(result)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            _err().print(str(exc.code), markup=False)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except CliError as exc:
        _err().print(Text(f"error: {exc}", style="red"))
        code = exc.exit_code
    except Exception:
        traceback.print_exc()
        code = 1
    _hard_exit(state, code)


def _hard_exit(state: CliState, code: int) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    state.hard_exit(code)
    # Only reached when a test replaced hard_exit.
    raise typer.Exit(code)


@app.command("dev")
def dev_cmd(ctx: typer.Context) -> None:
    """Start the whole local stack (same as `make dev`); Ctrl-C stops it."""
    _run_process(_state(ctx), "opsflow.dev.stack", "run_dev", "the dev stack")


@app.command("worker")
def worker_cmd(ctx: typer.Context) -> None:
    """Run the Temporal worker (all runbooks' workflows and activities)."""
    _run_process(_state(ctx), "opsflow.worker.main", "main", "the worker")


@app.command("api")
def api_cmd(ctx: typer.Context) -> None:
    """Run the HTTP API (uvicorn)."""
    _run_process(_state(ctx), "opsflow.api.__main__", "main", "the API")


@schedules_app.command("sync")
def schedules_sync_cmd(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Create or update the Temporal Schedules of every scheduled runbook."""
    state = _state(ctx)
    code = 0
    try:
        settings = state.get_settings()
        client_mod = _optional("opsflow.worker.client", "the Temporal client")
        schedules = _optional("opsflow.worker.schedules", "the schedules")

        async def sync() -> Any:
            client = await client_mod.connect(settings)
            return await schedules.sync_schedules(client, settings)

        ids = _run_async(sync())
        if _wants_json(ctx, json_out):
            _echo_json(_plain(ids))
        else:
            listed = ", ".join(str(i) for i in ids) if isinstance(ids, list) else str(ids)
            _out().print(f"schedules in sync: {listed or 'none'}", style="green", soft_wrap=True)
    except CliError as exc:
        _err().print(Text(f"error: {exc}", style="red"))
        code = exc.exit_code
    except Exception as exc:
        # Connection failures name the address; never a secret (the API key is not in it).
        _err().print(
            Text(f"error: schedules sync failed: {type(exc).__name__}: {exc}", style="red")
        )
        code = 1
    _hard_exit(state, code)
