"""The audit models' dbt project (``opsflow/dbt``): test and compile it programmatically.

dbt-core 1.10 with dbt-postgres runs in-process through ``dbtRunner``. The profile reads the
connection from environment variables that this module sets for the invocation only (from
``TARGET_DATABASE_URL``), so the password is never written to disk. Build output and logs go
to a private temporary folder per project and process (removed at exit), so the installed
package directory can stay read-only. Nothing is downloaded: anonymous usage statistics are
off and the project has no ``dbt deps`` packages.

Speed: importing dbt and parsing the project cost about two seconds, more than the data tests
themselves. The worker therefore warms dbt up when it starts (:func:`warm_up_in_background`),
and invocations keep dbt's partial-parse state in that private folder: a project file that
changes (a model's SQL edited by compliance staff) is parsed again, an unchanged one is not.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

PROJECT_DIR = Path(__file__).resolve().parent.parent / "dbt"

# dbt keeps process-wide state (adapters, flags, event manager): one invocation at a time.
_LOCK = threading.Lock()
# One private work folder (target/ with the partial-parse state, logs/) per project directory.
_WORK_DIRS: dict[Path, Path] = {}
# Compiled model SQL by (project, its content, models, target): see compile_models.
_COMPILED: dict[tuple[object, ...], dict[str, str]] = {}

log = logging.getLogger("opsflow.dbt")


class DbtError(Exception):
    """dbt could not run (bad project, no database): worth retrying or fixing the project."""


@dataclass
class DbtTestFailure:
    """One failed (or warned) data test."""

    name: str
    severity: str
    failures: int
    message: str


@dataclass
class DbtTestReport:
    """Outcome of ``dbt test``."""

    passed: int = 0
    failed: list[DbtTestFailure] = field(default_factory=list)
    warned: list[DbtTestFailure] = field(default_factory=list)


def dbt_version() -> str:
    """Installed dbt-core version."""
    from dbt.version import __version__

    return str(__version__)


def _content_digest(project_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(project_dir.rglob("*")):
        if path.is_file() and path.suffix in {".sql", ".yml", ".yaml"}:
            digest.update(str(path.relative_to(project_dir)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def models_revision(project_dir: Path = PROJECT_DIR) -> str:
    """Revision of the models: ``git:<sha>`` plus a content hash of the project files.

    The content hash is always present (an installed package has no git checkout); the git
    revision is added when the project lives in a work tree.
    """
    content = f"sha256:{_content_digest(project_dir)[:16]}"
    git = shutil.which("git")
    if git is None:
        return content
    try:
        out = subprocess.run(
            [git, "-C", str(project_dir), "log", "-1", "--format=%H", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return content
    sha = out.stdout.strip()
    return f"git:{sha[:12]} {content}" if out.returncode == 0 and sha else content


def _profile_env(target_url: str) -> dict[str, str]:
    parts = urlsplit(target_url)
    return {
        "OPSFLOW_DBT_HOST": parts.hostname or "127.0.0.1",
        "OPSFLOW_DBT_PORT": str(parts.port or 5432),
        "OPSFLOW_DBT_USER": unquote(parts.username or "postgres"),
        "OPSFLOW_DBT_PASSWORD": unquote(parts.password or ""),
        "OPSFLOW_DBT_DBNAME": unquote(parts.path.lstrip("/") or "postgres"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
    }


def _work_dir(project_dir: Path) -> Path:
    """Return this process's private work folder for ``project_dir`` (caller holds _LOCK)."""
    key = project_dir.resolve()
    work = _WORK_DIRS.get(key)
    if work is None or not work.is_dir():
        work = Path(tempfile.mkdtemp(prefix="opsflow-dbt-"))
        atexit.register(shutil.rmtree, work, True)
        _WORK_DIRS[key] = work
    return work


@contextmanager
def _session(target_url: str, project_dir: Path) -> Iterator[list[str]]:
    env = _profile_env(target_url)
    with _LOCK:
        tmp = _work_dir(project_dir)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield [
                "--project-dir",
                str(project_dir),
                "--profiles-dir",
                str(project_dir),
                "--target-path",
                str(Path(tmp) / "target"),
                "--log-path",
                str(Path(tmp) / "logs"),
                # dbt re-parses every file whose checksum, and everything when the profile
                # or the dbt version, changed since the state in target/ was written.
                "--partial-parse",
                "--no-use-colors",
                "--quiet",
                "--log-level",
                "none",
                "--log-level-file",
                "none",
            ]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _invoke(args: list[str]) -> Any:
    from dbt.cli.main import dbtRunner

    res = dbtRunner().invoke(args)
    if res.exception is not None:
        raise DbtError(f"dbt {args[0]} failed: {type(res.exception).__name__}: {res.exception}")
    return res


def warm_up(target_url: str, project_dir: Path = PROJECT_DIR) -> None:
    """Import dbt and parse the project once, so the first export does not wait for either.

    Raises:
        DbtError: the project does not parse (the export would fail the same way).

    """
    with _session(target_url, project_dir) as common:
        _invoke(["parse", *common])


def wait_until_quiet(
    max_share: float = 0.25, window: float = 1.0, give_up_after: float | None = None
) -> bool:
    """Block until this process used under ``max_share`` of a core for a whole ``window``.

    Returns:
        True when the process was quiet; False when ``give_up_after`` seconds passed first
        (without it, the wait has no end: a worker that is never quiet parses dbt in its
        first export instead, rather than in the middle of its work).

    """
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while deadline is None or time.monotonic() < deadline:
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(window)
        if (time.process_time() - cpu) / (time.monotonic() - wall) < max_share:
            return True
    return False


def warm_up_in_background(
    target_url: str, project_dir: Path = PROJECT_DIR, *, delay: float = 0.0
) -> threading.Thread:
    """Run :func:`warm_up` in a daemon thread once the worker is quiet; failures are logged.

    Not before ``delay`` seconds, and then only when the process has a quiet second: importing
    and parsing dbt takes two seconds of CPU (and the GIL) that the work waiting for the
    worker - a restart's backlog, ten thousand SLA workflows being armed, escalations - needs
    now, and the first export, hours later, does not need yet.
    """

    def _run() -> None:
        if delay > 0:
            time.sleep(delay)
        wait_until_quiet()
        try:
            warm_up(target_url, project_dir)
            log.info("dbt ready (project parsed)")
        except Exception as exc:  # the export itself reports (and retries) any real problem
            log.warning("dbt warm-up failed: %s", exc)

    thread = threading.Thread(target=_run, name="dbt-warm-up", daemon=True)
    thread.start()
    return thread


def run_tests(target_url: str, project_dir: Path = PROJECT_DIR) -> DbtTestReport:
    """Run the project's data tests against the application database.

    Raises:
        DbtError: dbt itself failed (not a data test).

    """
    with _session(target_url, project_dir) as common:
        res = _invoke(["test", *common])
    report = DbtTestReport()
    for r in res.result or []:
        status = str(getattr(r.status, "value", r.status))
        node = r.node
        severity = str(getattr(node.config, "severity", "ERROR")).upper()
        entry = DbtTestFailure(
            name=str(node.name),
            severity=severity,
            failures=int(r.failures or 0),
            message=str(r.message or ""),
        )
        if status == "pass":
            report.passed += 1
        elif status == "warn":
            report.warned.append(entry)
        else:  # "fail" or "error"
            report.failed.append(entry)
    return report


def compile_models(
    target_url: str, models: tuple[str, ...], project_dir: Path = PROJECT_DIR
) -> dict[str, str]:
    """Compile the named models; return each one's SELECT.

    Raises:
        DbtError: dbt failed or a model is missing.

    """
    env = _profile_env(target_url)
    # Compiled SQL is a function of the project files and the target (relation names carry
    # the database and schema), never of the data: an unchanged project is compiled once.
    key = (
        str(project_dir.resolve()),
        _content_digest(project_dir),
        models,
        env["OPSFLOW_DBT_HOST"],
        env["OPSFLOW_DBT_PORT"],
        env["OPSFLOW_DBT_USER"],
        env["OPSFLOW_DBT_DBNAME"],
        os.environ.get("OPSFLOW_DBT_SOURCE_SCHEMA", ""),
    )
    cached = _COMPILED.get(key)
    if cached is not None:
        return dict(cached)
    with _session(target_url, project_dir) as common:
        res = _invoke(["compile", *common, "--select", " ".join(models)])
    compiled: dict[str, str] = {}
    for r in res.result or []:
        node = r.node
        if node.resource_type == "model" and node.name in models:
            compiled[str(node.name)] = str(node.compiled_code).strip().rstrip(";")
    missing = [m for m in models if m not in compiled]
    if missing:
        raise DbtError(f"dbt project has no model(s) {missing}")
    _COMPILED[key] = dict(compiled)
    return compiled
