"""Alembic environment; the shared body lives in :func:`opsflow.db.run_env`."""

from opsflow.db import run_env

run_env()
