"""The audit package writer on real PostgreSQL and SeaweedFS: rows, framing, failures.

``write_package`` reads COPY through libpq's low-level API in blocks (see ``_copy_blocks``);
these tests pin what that must never change: every byte of every row (quotes, commas, line
breaks inside a field, non-ASCII), exact row counts, the same package whether the models are
streamed one after the other or at once, and a COPY that fails or is cancelled half-way
leaving neither an object nor an unfinished upload behind.
"""

from __future__ import annotations

import csv
import io
import secrets
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from opsflow.adapters import audit_package
from opsflow.adapters.crypto import Keyring, new_key_entry

pytestmark = pytest.mark.integration

ROWS = 7000  # several COPY blocks (2048 rows each) and a partial last one

TRICKY = [
    "plain",
    "comma, inside",
    'quote " inside',
    "line\nbreak inside",
    "crlf\r\ninside",
    "ünïcödé ✓ 漢字",
    "",
]


@pytest.fixture(scope="module")
def table(databases: Any) -> Iterator[str]:
    """A scratch table in the app database with awkward text (dropped at the end)."""
    name = f"pkg_{secrets.token_hex(4)}"
    with psycopg.connect(databases.app_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, note text, n numeric)")
        conn.execute(
            f"""INSERT INTO {name}
                SELECT g, (%s::text[])[1 + g %% %s] || ' #' || g, g / 7.0
                FROM generate_series(1, %s) g""",
            (TRICKY, len(TRICKY), ROWS),
        )
    yield name
    with psycopg.connect(databases.app_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {name}")


def _models(table: str) -> list[audit_package.ModelSql]:
    return [
        audit_package.ModelSql("first", f"select id, note, n from {table}"),
        audit_package.ModelSql(
            "second", f"select id, upper(note) as note from {table} where id % 3 = 0"
        ),
    ]


def _source(app_url: str, sql: str) -> list[list[str]]:
    with psycopg.connect(app_url) as conn:
        buf = io.BytesIO()
        with conn.cursor().copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER true)") as cp:
            for data in cp:
                buf.write(bytes(data))
    return list(csv.reader(io.StringIO(buf.getvalue().decode(), newline="")))


def _write(
    stack: Any,
    databases: Any,
    key: str,
    keyring: Keyring,
    models: Any,
    parallel: int,
    counters: audit_package.Counters | None = None,
) -> audit_package.PackageFacts:
    return audit_package.write_package(
        databases.app_url,
        stack.s3,
        stack.settings.s3_audit_bucket,
        key,
        keyring,
        models,
        {"test": True},
        counters or audit_package.Counters(),
        parallel=parallel,
    )


def _read(stack: Any, key: str, keyring: Keyring) -> dict[str, bytes]:
    body = stack.s3.get_object(Bucket=stack.settings.s3_audit_bucket, Key=key)["Body"]
    with tempfile.TemporaryFile() as out:
        audit_package.read_package(body, keyring, out)  # verifies every checksum
        with zipfile.ZipFile(out) as zf:
            return {n: zf.read(n) for n in zf.namelist()}


def _uploads(stack: Any, key: str) -> list[Any]:
    resp = stack.s3.list_multipart_uploads(Bucket=stack.settings.s3_audit_bucket, Prefix=key)
    return [u for u in resp.get("Uploads", []) if u.get("Key") == key]


def _exists(stack: Any, key: str) -> bool:
    return audit_package.object_exists(stack.s3, stack.settings.s3_audit_bucket, key)


@pytest.mark.parametrize("parallel", [1, 2])
def test_every_row_and_count_survive_the_block_reader(
    stack: Any, databases: Any, table: str, parallel: int
) -> None:
    keyring = Keyring.parse(new_key_entry("pkg"))
    key = f"tests/pkg/{secrets.token_hex(4)}-{parallel}.ofae"
    counters = audit_package.Counters()
    facts = _write(stack, databases, key, keyring, _models(table), parallel, counters)

    files = _read(stack, key, keyring)
    assert sorted(files) == ["first.csv", "manifest.json", "second.csv"]
    for model in _models(table):
        expected = _source(databases.app_url, model.sql)
        got = list(csv.reader(io.StringIO(files[f"{model.name}.csv"].decode(), newline="")))
        assert got == expected  # same rows, same order, every awkward byte
        entry = next(e for e in facts.entries if e.model == model.name)
        assert entry.rows == len(expected) - 1  # the command tag's count, header excluded
    assert {e.model: e.rows for e in facts.entries} == {"first": ROWS, "second": ROWS // 3}
    # Progress counts COPY messages: every row plus each model's header line.
    assert counters.rows == ROWS + ROWS // 3 + 2
    assert not _uploads(stack, key)


def test_serial_and_parallel_packages_hold_the_same_files(
    stack: Any, databases: Any, table: str
) -> None:
    keyring = Keyring.parse(new_key_entry("pkg"))
    contents = []
    for parallel in (1, 2):
        key = f"tests/pkg/{secrets.token_hex(4)}-same-{parallel}.ofae"
        _write(stack, databases, key, keyring, _models(table), parallel)
        files = _read(stack, key, keyring)
        contents.append({n: b for n, b in files.items() if n != "manifest.json"})
    assert contents[0] == contents[1]


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_copy_failing_half_way_leaves_nothing(
    stack: Any, databases: Any, table: str, parallel: int
) -> None:
    keyring = Keyring.parse(new_key_entry("pkg"))
    key = f"tests/pkg/{secrets.token_hex(4)}-fail-{parallel}.ofae"
    # Division by zero at id 5000: the server ends the COPY with an error after ~2 blocks.
    models = [
        audit_package.ModelSql("first", f"select id, 1 / (id - 5000) as boom from {table}"),
        audit_package.ModelSql("second", f"select id from {table}"),
    ]
    with pytest.raises(psycopg.Error, match="division by zero"):
        _write(stack, databases, key, keyring, models, parallel)
    assert not _exists(stack, key)
    assert not _uploads(stack, key)


def test_a_cancelled_export_stops_and_aborts_its_upload(
    stack: Any, databases: Any, table: str
) -> None:
    keyring = Keyring.parse(new_key_entry("pkg"))
    key = f"tests/pkg/{secrets.token_hex(4)}-cancel.ofae"
    counters = audit_package.Counters()
    counters.cancelled.set()  # as the activity does when Temporal cancels it
    big = [audit_package.ModelSql("big", f"select a.* from {table} a, generate_series(1, 3)")]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _write(stack, databases, key, keyring, big, 1, counters)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], audit_package.PackageError)
    assert not _exists(stack, key)
    assert not _uploads(stack, key)
