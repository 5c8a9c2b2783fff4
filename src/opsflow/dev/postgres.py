"""PostgreSQL for the local stack: ``DATABASE_URL``'s server when reachable, else a private one.

The private cluster lives in ``<state>/pg/data``, is made with the machine's ``initdb`` and
run with ``pg_ctl`` on its own port (trust authentication, 127.0.0.1 only, no Unix socket).
PostgreSQL refuses to run as root, so as root both run as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from opsflow.db import SERVICE_ROLE, ensure_database, ensure_service_role, libpq_url

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def with_database(url: str, dbname: str) -> str:
    """Return ``url`` naming database ``dbname`` instead of its own."""
    parts = urlsplit(libpq_url(url))
    return urlunsplit(parts._replace(path=f"/{dbname}"))


def with_user(url: str, user: str) -> str:
    """Return ``url`` connecting as ``user`` (no password) instead of its own user."""
    parts = urlsplit(libpq_url(url))
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def database_of(url: str, default: str) -> str:
    """Return the database a URL names, or ``default``."""
    path = urlsplit(libpq_url(url)).path.lstrip("/")
    return path or default


def reachable(url: str, timeout: int = 3) -> str | None:
    """Return None if ``url`` accepts a connection, else a short reason (no secrets)."""
    try:
        with psycopg.connect(libpq_url(url), connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        # The first line of libpq's message names host/port/cause, never the password.
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


@dataclass(frozen=True)
class DatabaseUrls:
    """Where the stack's databases are, as the settings name them."""

    server_admin_url: str  # a role that may create databases and roles (db "postgres")
    database_url: str  # DATABASE_URL: the service role on the opsflow database
    database_admin_url: str  # DATABASE_ADMIN_URL: the owner, for migrations
    target_database_url: str  # TARGET_DATABASE_URL: the app database
    private: bool  # True when a private cluster serves them


def plan_urls(environ: dict[str, str], server_admin_url: str, private: bool) -> DatabaseUrls:
    """Derive every database URL from the environment and the server to use.

    Database names and the service role come from ``DATABASE_URL`` and
    ``TARGET_DATABASE_URL`` when set (so tests can pick unique names), else ``opsflow``,
    ``app`` and ``opsflow_service``. On a private cluster all URLs point at it.
    """
    env_db = environ.get("DATABASE_URL")
    env_target = environ.get("TARGET_DATABASE_URL")
    env_admin = environ.get("DATABASE_ADMIN_URL")
    opsflow_db = database_of(env_db, "opsflow") if env_db else "opsflow"
    app_db = database_of(env_target, "app") if env_target else "app"
    service = (urlsplit(libpq_url(env_db)).username if env_db else None) or SERVICE_ROLE
    if private or not env_db:
        database_url = with_database(with_user(server_admin_url, service), opsflow_db)
    else:
        database_url = env_db
    if env_admin and not private:
        database_admin_url = env_admin
    else:
        database_admin_url = with_database(server_admin_url, opsflow_db)
    if env_target and not private:
        target_url = env_target
    else:
        target_url = with_database(server_admin_url, app_db)
    return DatabaseUrls(
        server_admin_url=server_admin_url,
        database_url=database_url,
        database_admin_url=database_admin_url,
        target_database_url=target_url,
        private=private,
    )


def provision(urls: DatabaseUrls) -> None:
    """Create both databases and the service role unless they exist (idempotent)."""
    ensure_database(urls.server_admin_url, database_of(urls.database_admin_url, "opsflow"))
    ensure_database(urls.server_admin_url, database_of(urls.target_database_url, "app"))
    service = urlsplit(libpq_url(urls.database_url)).username
    admin = urlsplit(libpq_url(urls.database_admin_url)).username
    if service and service != admin:
        ensure_service_role(urls.server_admin_url, service)


def find_pg_bin(name: str) -> str:
    """Return the path of a PostgreSQL server program (``initdb``, ``pg_ctl``).

    Looks on PATH first, then in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest).

    Raises:
        FileNotFoundError: The program is not installed.

    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    raise FileNotFoundError(
        f"{name} not found (install the PostgreSQL server, e.g. apt-get install postgresql)"
    )


class PrivateCluster:
    """A PostgreSQL cluster of the stack's own, under ``<state>/pg``."""

    def __init__(self, root: Path, port: int) -> None:
        """Describe the cluster (nothing is created until :meth:`start`).

        Args:
            root: Its folder (``<state>/pg``); data in ``root/data``, log in ``root/postgres.log``.
            port: TCP port on 127.0.0.1.

        """
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self._runas: list[str] = []
        self._uid: int | None = None
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            entry = pwd.getpwnam("postgres")
            self._runas = ["runuser", "-u", "postgres", "--"]
            self._uid = entry.pw_uid
            self._gid = entry.pw_gid

    @property
    def url(self) -> str:
        """Superuser URL of the cluster (database ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._runas, *argv], capture_output=True, text=True, check=check, timeout=120
        )

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self._uid is not None:
            os.chown(self.root, self._uid, self._gid)
            # The postgres user must be able to walk down to the folder.
            probe = subprocess.run(
                [*self._runas, "test", "-w", str(self.root)], capture_output=True, check=False
            )
            if probe.returncode != 0:
                raise PermissionError(
                    f"the postgres user cannot write {self.root}; make its parent folders "
                    "traversable (chmod o+x) or set DATABASE_URL to a reachable server"
                )

    def running(self) -> bool:
        """Return True if the cluster's postmaster is up."""
        if not (self.data / "PG_VERSION").exists():
            return False
        return (
            self._run(find_pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False).returncode
            == 0
        )

    def start(self) -> bool:
        """Create the cluster on first use, then start it; True if this call started it."""
        self._prepare_root()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                find_pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            )
        if self.running():
            return False
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=200 -c synchronous_commit=off"
        )
        result = self._run(
            find_pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            tail = (
                self.log.read_text("utf-8", "replace").splitlines()[-20:]
                if self.log.exists()
                else []
            )
            raise RuntimeError(
                "private PostgreSQL did not start:\n" + result.stderr + "\n".join(tail)
            )
        return True

    def stop(self) -> None:
        """Stop the cluster (fast mode: clients are disconnected, data is safe)."""
        if self.running():
            self._run(
                find_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False
            )
