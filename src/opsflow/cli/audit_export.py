"""``opsflow audit-export fetch|verify``: download, decrypt and check a nightly audit package.

Like ``opsflow audit verify`` these read the stores directly: ``export_runs`` in the opsflow
database (``DATABASE_URL``), the object in the audit bucket (``S3_*``) and the keyring
(``AUDIT_EXPORT_KEYS`` / ``AUDIT_EXPORT_KEYS_FILE``), so they work while the API is down.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

audit_export_app = typer.Typer(
    help="Fetch and verify nightly audit export packages.", no_args_is_help=True
)

DateOpt = Annotated[str, typer.Option("--date", help="Export date, YYYY-MM-DD.")]
VersionOpt = Annotated[
    int | None,
    typer.Option("--version", min=1, help="Package version (default: the latest succeeded)."),
]


@dataclass
class Check:
    """One comparison between the stored package and its ``export_runs`` row."""

    what: str
    expected: Any
    found: Any

    @property
    def ok(self) -> bool:
        """Return True when both sides agree."""
        return bool(self.expected == self.found)


def _settings(ctx: typer.Context) -> Any:
    state = ctx.find_root().obj
    if state is not None and hasattr(state, "get_settings"):
        return state.get_settings()
    from opsflow.config import load_settings

    return load_settings()


def _record(settings: Any, export_date: str, version: int | None) -> dict[str, Any]:
    import psycopg
    from psycopg.rows import dict_row

    try:
        d = date.fromisoformat(export_date)
    except ValueError:
        raise typer.BadParameter("expected YYYY-MM-DD", param_hint="--date") from None
    query = """SELECT * FROM export_runs WHERE export_date = %s AND status = 'succeeded'"""
    args: tuple[Any, ...] = (d,)
    if version is not None:
        query += " AND version = %s"
        args = (d, version)
    query += " ORDER BY version DESC LIMIT 1"
    try:
        with psycopg.connect(settings.database_url.get_secret_value(), row_factory=dict_row) as c:
            row = c.execute(query, args).fetchone()
    except psycopg.Error as exc:
        _fail(f"cannot read export_runs: {type(exc).__name__}")
    if row is None:
        _fail(f"no succeeded audit export for {export_date}" + (f" v{version}" if version else ""))
    return dict(row)


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _download_and_check(settings: Any, rec: dict[str, Any], out: Any) -> list[Check]:
    from botocore.exceptions import BotoCoreError, ClientError

    from opsflow.adapters import audit_package
    from opsflow.adapters.crypto import CryptoError, KeyringError, keyring_from_settings
    from opsflow.adapters.s3 import make_s3_client

    try:
        keyring = keyring_from_settings(settings)
    except (KeyringError, OSError) as exc:
        _fail(f"keyring unusable: {exc}")
    s3 = make_s3_client(settings)
    try:
        body = s3.get_object(Bucket=rec["bucket"], Key=rec["object_key"])["Body"]
        facts = audit_package.read_package(body, keyring, out)  # type: ignore[arg-type]
    except (ClientError, BotoCoreError) as exc:
        _fail(f"cannot download s3://{rec['bucket']}/{rec['object_key']}: {exc}")
    except (CryptoError, audit_package.PackageError) as exc:
        _fail(f"package s3://{rec['bucket']}/{rec['object_key']} is not intact: {exc}")
    return [
        Check("ciphertext sha256", rec["ciphertext_sha256"], facts.ciphertext_sha256),
        Check("ciphertext bytes", rec["ciphertext_bytes"], facts.ciphertext_bytes),
        Check("zip sha256", rec["plaintext_sha256"], facts.plaintext_sha256),
        Check("zip bytes", rec["plaintext_bytes"], facts.plaintext_bytes),
        Check("key id", rec["key_id"], facts.key_id),
        Check("row counts", rec["row_counts"], {e.model: e.rows for e in facts.entries}),
        Check(
            "snapshot time",
            rec["snapshot_at"].isoformat() if rec["snapshot_at"] else None,
            facts.snapshot_at,
        ),
    ]


def _report(rec: dict[str, Any], checks: list[Check], as_json: bool, extra: str = "") -> None:
    ok = all(c.ok for c in checks)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "export_date": rec["export_date"].isoformat(),
                    "version": rec["version"],
                    "object": f"s3://{rec['bucket']}/{rec['object_key']}",
                    "ok": ok,
                    "checks": [{**asdict(c), "ok": c.ok} for c in checks],
                },
                default=str,
            )
        )
    else:
        out = Console()
        out.print(f"s3://{rec['bucket']}/{rec['object_key']} (v{rec['version']})")
        for c in checks:
            mark = "[green]ok[/green]" if c.ok else f"[red]MISMATCH[/red] expected {c.expected}"
            out.print(f"  {c.what}: {c.found} {mark}")
        out.print("[green]package verified[/green]" if ok else "[red]package differs[/red]")
        if extra and ok:
            out.print(extra)
    if not ok:
        raise typer.Exit(1)


@audit_export_app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    export_date: DateOpt,
    version: VersionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check the stored package against export_runs (writes nothing); non-zero if it differs."""
    settings = _settings(ctx)
    rec = _record(settings, export_date, version)
    with tempfile.TemporaryFile() as scratch:
        checks = _download_and_check(settings, rec, scratch)
    _report(rec, checks, json_out)


@audit_export_app.command("fetch")
def fetch_cmd(
    ctx: typer.Context,
    export_date: DateOpt,
    out: Annotated[
        Path | None, typer.Option("--out", help="Zip file to write (default ./audit-export-D.zip).")
    ] = None,
    version: VersionOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Download, decrypt and verify a package; write the zip only if every checksum holds."""
    settings = _settings(ctx)
    rec = _record(settings, export_date, version)
    target = out or Path(f"audit-export-{export_date}.zip")
    target = target.resolve()
    fd, tmp_name = tempfile.mkstemp(prefix=".audit-export-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            checks = _download_and_check(settings, rec, fh)
        if not all(c.ok for c in checks):
            _report(rec, checks, json_out)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    _report(rec, checks, json_out, extra=f"wrote {target}")
