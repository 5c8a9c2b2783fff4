"""Alembic environments of opsflow's two databases, driven from Python (no ``alembic.ini``).

- ``opsflow`` (``db/opsflow/``): the platform's own tables, migrated as the owner
  (``settings.admin_database_url``). After every upgrade the service role named in
  ``settings.database_url`` gets its privileges: ``SELECT, INSERT`` on ``audit_events`` only,
  ``SELECT, INSERT, UPDATE, DELETE`` on every other table and ``USAGE`` on the sequences. The
  grants are re-applied on each upgrade (they are idempotent), so tables added by later
  revisions are covered without each revision repeating them, and a deployment can rename its
  service role without a new revision.
- ``app`` (``db/app/``): the operated application's reference schema
  (``settings.target_database_url``).

Each revision writes its DDL out as plain SQL (``op.execute``). Each environment keeps its own
version table (``alembic_version_opsflow``, ``alembic_version_app``), so both may even share
one database. Upgrades take a transaction-scoped advisory lock: two processes migrating at
once run one after the other, the second finding nothing to do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import Connection, create_engine, pool, text

from opsflow.config import Settings, get_settings, redact_url

Which = Literal["opsflow", "app"]
WhichOrAll = Literal["opsflow", "app", "all"]

_HERE = Path(__file__).resolve().parent
_LOG = logging.getLogger(__name__)

# Arbitrary constants: serialise concurrent upgrades of the same database.
_MIGRATION_LOCK_KEY: dict[str, int] = {"opsflow": 0x6F70_7366_0001, "app": 0x6F70_7366_0002}

SERVICE_ROLE = "opsflow_service"


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` in SQLAlchemy's form for psycopg 3 (``postgresql+psycopg://``).

    Args:
        url: A libpq URL (``postgresql://`` or ``postgres://``) or an already converted one.

    Returns:
        The same URL naming the ``psycopg`` driver.

    """
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {redact_url(url)}")


def libpq_url(url: str) -> str:
    """Return ``url`` in libpq's form (``postgresql://``), undoing :func:`sqlalchemy_url`."""
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def url_user(url: str) -> str | None:
    """Return the user name a URL connects as, or None when it names none."""
    return urlsplit(libpq_url(url)).username or None


def _database_url(which: Which, settings: Settings) -> str:
    if which == "opsflow":
        return settings.admin_database_url
    return settings.target_database_url.get_secret_value()


def _service_role(settings: Settings) -> str | None:
    """Return the role to grant to: ``database_url``'s user unless it is the migration user."""
    service = url_user(settings.database_url.get_secret_value())
    admin = url_user(settings.admin_database_url)
    if service is None or service == admin:
        return None
    return service


def alembic_config(which: Which, settings: Settings | None = None) -> Config:
    """Build the Alembic configuration of one environment in memory.

    Args:
        which: ``"opsflow"`` or ``"app"``.
        settings: Where the databases are; the process settings when omitted.

    Returns:
        A :class:`alembic.config.Config` usable with :mod:`alembic.command`.

    """
    settings = settings or get_settings()
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / which))
    cfg.set_main_option("path_separator", "os")
    # URLs travel in ``attributes``, not in the ini options: configparser would choke on a
    # ``%`` in a password, and attributes never get written anywhere.
    cfg.attributes["url"] = sqlalchemy_url(_database_url(which, settings))
    cfg.attributes["which"] = which
    if which == "opsflow":
        cfg.attributes["service_role"] = _service_role(settings)
    return cfg


def upgrade(
    which: WhichOrAll = "all", settings: Settings | None = None, revision: str = "heads"
) -> None:
    """Upgrade one or both databases to ``revision``.

    Args:
        which: ``"opsflow"``, ``"app"`` or ``"all"`` (both, opsflow first).
        settings: Where the databases are; the process settings when omitted.
        revision: Target revision (``"heads"`` by default: each runbook's migrations may
            branch from a common base, and every branch is applied).

    """
    settings = settings or get_settings()
    targets: tuple[Which, ...] = get_args(Which) if which == "all" else (which,)
    for target in targets:
        _LOG.info(
            "migrating %s database %s to %s",
            target,
            redact_url(_database_url(target, settings)),
            revision,
        )
        command.upgrade(alembic_config(target, settings), revision)


def current(which: Which, settings: Settings | None = None) -> str | None:
    """Return the revision(s) a database is at (comma-joined), or None before the first upgrade.

    Args:
        which: ``"opsflow"`` or ``"app"``.
        settings: Where the databases are; the process settings when omitted.

    """
    settings = settings or get_settings()
    engine = create_engine(sqlalchemy_url(_database_url(which, settings)), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": _version_table(which)})
            heads = ctx.get_current_heads()
            return ",".join(sorted(heads)) if heads else None
    finally:
        engine.dispose()


def head(which: Which) -> str | None:
    """Return the head revision(s) shipped with this package for one environment.

    Several runbooks may add migration branches from a common base; their heads are joined
    with commas, sorted, in the same form :func:`current` answers.
    """
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE / which))
    cfg.set_main_option("path_separator", "os")
    heads = ScriptDirectory.from_config(cfg).get_heads()
    return ",".join(sorted(heads)) if heads else None


def _version_table(which: str) -> str:
    return f"alembic_version_{which}"


def ensure_database(server_admin_url: str, dbname: str) -> bool:
    """Create database ``dbname`` unless it exists.

    Args:
        server_admin_url: A URL of the server as a role allowed to create databases (any
            database of that server, e.g. ``postgres``).
        dbname: Name of the database to create.

    Returns:
        True if this call created it, False if it already existed.

    """
    with psycopg.connect(libpq_url(server_admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent caller between the check and here
        except psycopg.errors.UniqueViolation:
            return False  # the same race, reported through pg_database's unique index
    return True


def ensure_service_role(
    server_admin_url: str, role: str = SERVICE_ROLE, password: str | None = None
) -> None:
    """Create the login role the services use, or update its password.

    Args:
        server_admin_url: A URL of the server as a role allowed to create roles.
        role: Name of the role.
        password: Its password (None: no password, for trust or peer authentication). An
            existing role gets this password; with None an existing role is left as it is.

    """
    create = sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role))
    alter = sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(role))
    if password is not None:
        create = create + sql.SQL(" PASSWORD {}").format(sql.Literal(password))
        alter = alter + sql.SQL(" PASSWORD {}").format(sql.Literal(password))
    with psycopg.connect(libpq_url(server_admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if not exists:
            try:
                conn.execute(create)
                return
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass  # a concurrent caller created it: fall through to set the password
        if password is not None:
            conn.execute(alter)


def grant_service_role(conn: Connection, role: str) -> None:
    """Grant ``role`` what the services need on the opsflow schema (idempotent).

    ``audit_events`` gets ``SELECT, INSERT`` only (and any broader grant is revoked), so the
    services can append to the chain but never rewrite it.

    Args:
        conn: A SQLAlchemy connection to the opsflow database as the schema owner.
        role: The service role.

    """
    ident = '"' + role.replace('"', '""') + '"'
    tables = [
        r[0]
        for r in conn.execute(
            text(
                "SELECT quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename NOT LIKE 'alembic_version%'"
            )
        )
    ]
    conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {ident}"))
    for table in tables:
        if table == "audit_events":
            conn.execute(text(f"REVOKE ALL ON audit_events FROM {ident}"))
            conn.execute(text(f"GRANT SELECT, INSERT ON audit_events TO {ident}"))
        else:
            conn.execute(text(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {ident}"))
    conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {ident}"))
    # Readable so the services (health report, /healthz) can tell which revision is live.
    conn.execute(text(f"GRANT SELECT ON alembic_version_opsflow TO {ident}"))


def run_env() -> None:
    """Body of both ``env.py`` files: run the migrations Alembic asked for.

    Online mode connects with the URL :func:`alembic_config` put in the attributes; offline
    mode (``alembic upgrade --sql``) prints the SQL instead.
    """
    from alembic import context

    cfg = context.config
    which: Which = "app" if cfg.attributes.get("which") == "app" else "opsflow"
    script_location = Path(cfg.get_main_option("script_location") or "")
    if "which" not in cfg.attributes and script_location.name in ("opsflow", "app"):
        # Started by the ``alembic`` command line rather than :func:`upgrade`.
        which = "app" if script_location.name == "app" else "opsflow"
    url = str(cfg.attributes.get("url") or sqlalchemy_url(_database_url(which, get_settings())))
    version_table = _version_table(which)
    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn, version_table=version_table, transaction_per_migration=False
            )
            with context.begin_transaction():
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY[which]}
                )
                context.run_migrations()
                role = cfg.attributes.get("service_role")
                if which == "opsflow" and role:
                    grant_service_role(conn, str(role))
    finally:
        engine.dispose()
