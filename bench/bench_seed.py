"""``opsflow seed`` throughput: rows/s and requests/s for N requests on a scratch database.

Run alone: ``.venv/bin/python bench/bench_seed.py 1000000``. The lead's bench runner calls
``run(n)``. The scratch database (``app_bench_<pid>_<rand>`` on ``OPSFLOW_BENCH_PG_URL``,
default the local server as ``postgres``) is created, migrated, seeded and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from opsflow.config import Settings
from opsflow.db import ensure_database, upgrade
from opsflow.seed import seed

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BASELINE_SECONDS_1M = 120.0  # the bar: 1 million requests in under two minutes


def run(n: int = 1_000_000, *, server_url: str | None = None, tenants: int = 40) -> dict[str, Any]:
    """Seed ``n`` requests into a fresh scratch database and return the figures.

    Returns:
        ``requests``, ``rows`` (all tables), ``seconds``, ``rows_per_second``,
        ``requests_per_second``, ``per_table`` and the two-minute ``baseline_seconds`` scaled
        to ``n``.
    """
    server = server_url or os.environ.get("OPSFLOW_BENCH_PG_URL") or DEFAULT_SERVER_URL
    name = f"app_bench_{os.getpid()}_{secrets.token_hex(3)}"
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    ensure_database(server, name)
    try:
        upgrade("app", Settings(target_database_url=url))
        report = seed(url, requests=n, tenants=tenants)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    return {
        "name": "opsflow seed",
        "requests": n,
        "rows": report.total_rows,
        "seconds": round(report.seconds, 2),
        "rows_per_second": round(report.rows_per_second),
        "requests_per_second": round(n / report.seconds) if report.seconds else 0,
        "baseline_seconds": round(BASELINE_SECONDS_1M * n / 1_000_000, 2),
        "per_table": report.rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("n", nargs="?", type=int, default=1_000_000, help="service requests")
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    out = run(args.n, tenants=args.tenants)
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"opsflow seed: {out['requests']:,} requests, {out['rows']:,} rows in "
            f"{out['seconds']:.1f} s = {out['rows_per_second']:,} rows/s, "
            f"{out['requests_per_second']:,} requests/s "
            f"(bar: {out['baseline_seconds']:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
