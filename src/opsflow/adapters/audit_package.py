"""The audit package pipeline: COPY -> zip -> AES-256-GCM -> S3 multipart, and its reader.

Everything streams: rows leave PostgreSQL with ``COPY ... TO STDOUT`` inside one REPEATABLE READ,
READ ONLY transaction (one snapshot for every model), go through a streaming ``zipfile`` writer
(one CSV per model, then ``manifest.json``), the chunked encryptor of
:mod:`opsflow.adapters.crypto`, and an S3 multipart upload with SSE ``AES256``. Memory holds one
upload part and one encryption chunk, whatever the table sizes. A failed upload is aborted, so
no partial object is ever visible; the object appears only when the upload completes.

These functions are blocking (psycopg, boto3, deflate); activities run them in a thread.
"""

from __future__ import annotations

import hashlib
import json
import queue
import select
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import psycopg
import psycopg.sql
from botocore.exceptions import ClientError
from psycopg import pq

from opsflow.adapters import zipstream
from opsflow.adapters.crypto import (
    DEFAULT_CHUNK_SIZE,
    Encryptor,
    Keyring,
    decrypt_chunks,
    read_header,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MANIFEST_NAME = "manifest.json"
DEFAULT_PART_SIZE = 8 * 1024 * 1024
COMPRESS_LEVEL = 6


class PackageError(Exception):
    """A stored package does not match its manifest or its record."""


@dataclass
class ModelSql:
    """A compiled model: its name (the CSV is ``<name>.csv``) and its SELECT."""

    name: str
    sql: str


@dataclass
class Counters:
    """Progress of a running export, read by the heartbeat loop of the activity."""

    rows: int = 0
    plaintext_bytes: int = 0
    uploaded_bytes: int = 0
    parts: int = 0
    model: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Set by the activity when it is cancelled: the blocking pipeline stops at the next part.
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """Return the figures as a JSON-able dict."""
        with self.lock:
            return {
                "rows": self.rows,
                "plaintext_bytes": self.plaintext_bytes,
                "uploaded_bytes": self.uploaded_bytes,
                "parts": self.parts,
                "model": self.model,
            }


@dataclass
class Entry:
    """One file in the zip."""

    name: str
    model: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class PackageFacts:
    """What was written (or found) for one package."""

    snapshot_at: str
    entries: list[Entry]
    plaintext_bytes: int
    plaintext_sha256: str
    ciphertext_bytes: int
    ciphertext_sha256: str
    key_id: str
    manifest: dict[str, Any]


class MultipartSink:
    """Buffers bytes into parts of ``part_size`` and uploads them as one multipart upload."""

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        key: str,
        part_size: int,
        counters: Counters,
        metadata: dict[str, str],
    ) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.part_size = part_size
        self.counters = counters
        self.sha = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._parts: list[CompletedPartTypeDef] = []
        self.upload_id = s3.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            ServerSideEncryption="AES256",
            ContentType="application/octet-stream",
            Metadata=metadata,
        )["UploadId"]

    def write(self, data: bytes) -> None:
        """Add ciphertext; upload every full part."""
        if not data:
            return
        if self.counters.cancelled.is_set():
            raise PackageError("export cancelled")
        self.sha.update(data)
        self.size += len(data)
        self._buf += data
        if len(self._buf) >= self.part_size:
            # The buffer itself is the part (parts other than the last may be any size of at
            # least 5 MiB): no copy of it, and it is reused once the upload has returned.
            self._upload(self._buf)
            self._buf.clear()

    def _upload(self, body: bytes | bytearray) -> None:
        number = len(self._parts) + 1
        resp = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            # botocore takes a bytearray as a blob (validate._validate_blob); the stubs say
            # bytes only.
            Body=cast(bytes, body),
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})
        with self.counters.lock:
            self.counters.uploaded_bytes += len(body)
            self.counters.parts = number

    def complete(self) -> None:
        """Upload the last part and complete: only now does the object exist."""
        if self._buf or not self._parts:
            self._upload(bytes(self._buf))
            self._buf.clear()
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        """Abort the upload (its parts are discarded; nothing becomes visible)."""
        try:
            self.s3.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )
        except ClientError:
            pass


class _EncryptingWriter:
    """File-like sink for ``zipfile``: hashes plaintext, encrypts, hands ciphertext on.

    It has no ``tell``/``seek``, so ``zipfile`` writes in streaming mode (data descriptors).
    """

    def __init__(self, enc: Encryptor, sink: MultipartSink, counters: Counters) -> None:
        self.enc, self.sink, self.counters = enc, sink, counters
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        with self.counters.lock:
            self.counters.plaintext_bytes = self.size
        self.sink.write(self.enc.update(bytes(data)))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        # zipfile does not close a file object it was given; the stream ends in close_stream.
        return None

    def close_stream(self) -> None:
        self.sink.write(self.enc.finalize())


def _zip_time(moment: datetime) -> tuple[int, int, int, int, int, int]:
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def abort_stray_uploads(s3: S3Client, bucket: str, key: str) -> int:
    """Abort every unfinished multipart upload of ``key`` (dead attempts); return how many."""
    aborted = 0
    resp = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    for up in resp.get("Uploads", []):
        if up.get("Key") == key and up.get("UploadId"):
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"])
            aborted += 1
    return aborted


def object_exists(s3: S3Client, bucket: str, key: str) -> bool:
    """Return True when a completed object is stored at ``key``."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise
    return True


def write_package(
    target_url: str,
    s3: S3Client,
    bucket: str,
    key: str,
    keyring: Keyring,
    models: list[ModelSql],
    extra_manifest: dict[str, Any],
    counters: Counters,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compress_level: int = COMPRESS_LEVEL,
    parallel: int = 1,
) -> PackageFacts:
    """Snapshot the models, stream them into an encrypted zip and upload it to ``key``.

    With ``parallel`` > 1 the models are read by that many connections sharing one exported
    snapshot and deflated on as many cores (see :func:`_write_parallel`); with 1, one
    connection streams them one after the other through ``zipfile``.

    Raises:
        psycopg.Error: the database failed (the upload is aborted).
        botocore.exceptions.ClientError: S3 failed (the upload is aborted).

    """
    enc = Encryptor(keyring, chunk_size)
    sink = MultipartSink(
        s3, bucket, key, part_size, counters, {"opsflow-format": "OFAE1", "key-id": enc.key_id}
    )
    try:
        writer = _EncryptingWriter(enc, sink, counters)
        entries: list[Entry] = []
        with psycopg.connect(target_url, autocommit=False) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                cur = conn.cursor()
                cur.execute("SET LOCAL TIME ZONE 'UTC'")
                # The first query fixes the snapshot of the transaction; its now() is the
                # transaction's start, recorded as the snapshot time.
                cur.execute("SELECT now(), pg_current_snapshot()::text")
                row = cur.fetchone()
                assert row is not None
                snapshot: datetime = row[0]
                # The exact snapshot (xmin:xmax:xip): which transactions the package holds.
                pg_snapshot = str(row[1])
                if parallel > 1 and len(models) > 1:
                    manifest, entries = _write_parallel(
                        conn,
                        target_url,
                        writer,
                        models,
                        snapshot,
                        pg_snapshot,
                        extra_manifest,
                        counters,
                        compress_level,
                        parallel,
                    )
                    writer.close_stream()
                    sink.complete()
                    return _facts(snapshot, entries, writer, sink, enc, manifest)
                with zipfile.ZipFile(
                    writer,
                    mode="w",
                    compression=zipfile.ZIP_DEFLATED,
                    compresslevel=compress_level,
                ) as zf:
                    for model in models:
                        entries.append(_write_entry(zf, cur, model, snapshot, counters))
                    manifest = {
                        "format": "opsflow-audit-export/1",
                        "snapshot_at": snapshot.isoformat(),
                        "pg_snapshot": pg_snapshot,
                        "entries": [e.__dict__ for e in entries],
                        **extra_manifest,
                    }
                    info = zipfile.ZipInfo(MANIFEST_NAME, date_time=_zip_time(snapshot))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    zf.writestr(info, json.dumps(manifest, indent=2, sort_keys=True))
        writer.close_stream()
        sink.complete()
    except BaseException:
        sink.abort()
        raise
    return _facts(snapshot, entries, writer, sink, enc, manifest)


def _facts(
    snapshot: datetime,
    entries: list[Entry],
    writer: _EncryptingWriter,
    sink: MultipartSink,
    enc: Encryptor,
    manifest: dict[str, Any],
) -> PackageFacts:
    return PackageFacts(
        snapshot_at=snapshot.isoformat(),
        entries=entries,
        plaintext_bytes=writer.size,
        plaintext_sha256=writer.sha.hexdigest(),
        ciphertext_bytes=sink.size,
        ciphertext_sha256=sink.sha.hexdigest(),
        key_id=enc.key_id,
        manifest=manifest,
    )


@dataclass
class _Deflated:
    rows: int
    size: int
    compressed: int
    crc: int
    sha256: str


# The other models' compressed output waits in memory up to this much, then on disk.
SPOOL_MAX_MEMORY = 2 * 1024 * 1024
# Rows gathered before hashing and deflating (CSV rows of 60-200 bytes: blocks of ~0.1-0.4 MiB).
COPY_BLOCK_ROWS = 2048


@dataclass
class _Tally:
    """Rows of one COPY: from its command tag once it has ended."""

    rows: int = 0


def _copy_blocks(
    cur: psycopg.Cursor[Any], model: ModelSql, counters: Counters, tally: _Tally
) -> Iterator[bytes]:
    """Stream the model's CSV (header first) as blocks of ``COPY_BLOCK_ROWS`` rows.

    libpq hands COPY data over one row (one ``CopyData`` message) at a time. psycopg's
    ``Copy`` iterator spends a few microseconds of Python per row on its wait machinery;
    at millions of rows that, not deflate, bounded the export and held the GIL the other
    model's thread needed. So the rows are read here with psycopg's low-level libpq
    wrapper (:mod:`psycopg.pq`, ``get_copy_data`` in non-blocking mode, waiting on the
    socket only when libpq's buffer is empty) and gathered into blocks before any hashing
    or deflating. Progress counts messages (rows plus the header); ``tally.rows`` gets the
    exact number of rows from the command tag when the COPY has ended.

    Raises:
        psycopg.Error: the server reported an error (the connection is closed: it is in the
            middle of a COPY and cannot be reused).
        PackageError: the export was cancelled.

    """
    conn = cur.connection
    pg = conn.pgconn
    with counters.lock:
        counters.model = model.name
    # Model SQL comes from the shipped dbt project, compiled by dbt: it is trusted code.
    copy_sql = f"COPY ({model.sql}\n) TO STDOUT WITH (FORMAT csv, HEADER true)"
    ok = False
    try:
        pg.send_query(copy_sql.encode())
        while pg.is_busy():
            _wait_readable(pg)
        res = pg.get_result()
        if res is None or res.status != pq.ExecStatus.COPY_OUT:
            raise _result_error(pg, res)
        # Rows are copied into one buffer as they arrive, so no per-row object outlives its
        # row: surviving objects would push the garbage collector into full passes over the
        # worker's whole heap (dbt's manifest included) - that once doubled the export's time.
        buf = bytearray()
        get, rows = pg.get_copy_data, range(COPY_BLOCK_ROWS)
        ended = False
        while not ended:
            n = 0
            # The hot loop: one libpq call and one copy per row, nothing else.
            for _ in rows:
                nbytes, data = get(1)
                if nbytes > 0:
                    buf += data
                    n += 1
                elif nbytes == 0:  # nothing buffered: wait for the socket
                    _wait_readable(pg)
                else:  # -1: the COPY ended (-2, an error, is reported by the result)
                    ended = True
                    break
            if n:
                if counters.cancelled.is_set():
                    raise PackageError("export cancelled")
                with counters.lock:
                    counters.rows += n
                yield bytes(buf)
                buf.clear()
        res = pg.get_result()
        while pg.is_busy():
            _wait_readable(pg)
        if res is None or res.status != pq.ExecStatus.COMMAND_OK:
            raise _result_error(pg, res)
        tally.rows = max(res.command_tuples or 0, 0)
        while pg.get_result() is not None:  # the end of the command's results
            pass
        ok = True
    finally:
        if not ok:
            # Stopped mid-COPY (error, cancel, consumer failure): the connection cannot run
            # another statement; closing it ends the snapshot transaction on the server.
            conn.close()


def _wait_readable(pg: pq.abc.PGconn) -> None:
    select.select([pg.socket], [], [], 1.0)
    pg.consume_input()


def _result_error(pg: pq.abc.PGconn, res: pq.abc.PGresult | None) -> psycopg.Error:
    if res is not None and res.error_message:
        message = res.error_message
    else:
        message = pg.error_message
    return psycopg.OperationalError(message.decode("utf-8", "replace").strip() or "COPY failed")


def _deflate_model(
    cur: psycopg.Cursor[Any],
    model: ModelSql,
    level: int,
    counters: Counters,
    emit: Callable[[bytes], object],
) -> _Deflated:
    comp = zipstream.raw_deflater(level)
    sha = hashlib.sha256()
    crc = 0
    size = compressed = 0
    tally = _Tally()
    for block in _copy_blocks(cur, model, counters, tally):
        sha.update(block)
        crc = zlib.crc32(block, crc)
        size += len(block)
        out = comp.compress(block)
        if out:
            compressed += len(out)
            emit(out)
    tail = comp.flush()
    compressed += len(tail)
    emit(tail)
    return _Deflated(tally.rows, size, compressed, crc, sha.hexdigest())


def _write_parallel(
    conn: psycopg.Connection[Any],
    target_url: str,
    writer: _EncryptingWriter,
    models: list[ModelSql],
    snapshot: datetime,
    pg_snapshot: str,
    extra_manifest: dict[str, Any],
    counters: Counters,
    level: int,
    parallel: int,
) -> tuple[dict[str, Any], list[Entry]]:
    """Deflate every model in its own thread from one shared snapshot; frame them in order.

    The first model streams through a small queue straight into the zip; the others deflate
    at the same time into spooled temporary files (memory up to 2 MiB each, then disk) and
    are copied in after it, so memory stays bounded whatever the table sizes.
    """
    snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert snap is not None
    snapshot_id = str(snap[0])
    zs = zipstream.ZipStream(writer.write, snapshot)
    q: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    spools: dict[int, IO[bytes]] = {}

    def put(chunk: bytes) -> None:
        if not chunk:
            return
        while True:
            if counters.cancelled.is_set():
                raise PackageError("export cancelled")
            try:
                q.put(chunk, timeout=0.5)
                return
            except queue.Full:
                continue

    def first() -> _Deflated:
        try:
            return _deflate_model(conn.cursor(), models[0], level, counters, put)
        finally:
            q.put(None)

    def other(i: int) -> _Deflated:
        with psycopg.connect(target_url, autocommit=False) as c2:
            c2.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            c2.read_only = True
            with c2.transaction():
                cur = c2.cursor()
                # The very first statement: this transaction sees the export's snapshot.
                cur.execute(
                    psycopg.sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        psycopg.sql.Literal(snapshot_id)
                    )
                )
                cur.execute("SET LOCAL TIME ZONE 'UTC'")
                return _deflate_model(cur, models[i], level, counters, spools[i].write)

    entries: list[Entry] = []
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="audit-export") as pool:
        try:
            f0 = pool.submit(first)
            rest: dict[int, Future[_Deflated]] = {}
            for i in range(1, len(models)):
                spools[i] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_MEMORY)
                rest[i] = pool.submit(other, i)
            zs.begin(f"{models[0].name}.csv")
            while (chunk := q.get()) is not None:
                zs.data(chunk)
            results = {0: f0.result()}
            zs.end(results[0].crc, results[0].compressed, results[0].size)
            for i in range(1, len(models)):
                results[i] = rest[i].result()
                spool = spools[i]
                spool.seek(0)
                zs.begin(f"{models[i].name}.csv")
                while block := spool.read(1024 * 1024):
                    zs.data(block)
                zs.end(results[i].crc, results[i].compressed, results[i].size)
        except BaseException:
            counters.cancelled.set()
            raise
        finally:
            for spool in spools.values():
                spool.close()
    for i, model in enumerate(models):
        r = results[i]
        entries.append(Entry(f"{model.name}.csv", model.name, r.rows, r.size, r.sha256))
    manifest = {
        "format": "opsflow-audit-export/1",
        "snapshot_at": snapshot.isoformat(),
        "pg_snapshot": pg_snapshot,
        "entries": [e.__dict__ for e in entries],
        **extra_manifest,
    }
    zs.add_bytes(MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True).encode(), level)
    zs.close()
    return manifest, entries


def _write_entry(
    zf: zipfile.ZipFile,
    cur: psycopg.Cursor[Any],
    model: ModelSql,
    snapshot: datetime,
    counters: Counters,
) -> Entry:
    name = f"{model.name}.csv"
    info = zipfile.ZipInfo(name, date_time=_zip_time(snapshot))
    info.compress_type = zipfile.ZIP_DEFLATED
    sha = hashlib.sha256()
    size = 0
    tally = _Tally()
    with zf.open(info, mode="w", force_zip64=True) as out:
        for block in _copy_blocks(cur, model, counters, tally):
            out.write(block)
            sha.update(block)
            size += len(block)
        rows = tally.rows
    return Entry(name=name, model=model.name, rows=rows, bytes=size, sha256=sha.hexdigest())


class _HashingReader:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data


def read_package(src: IO[bytes], keyring: Keyring, out: BinaryIO) -> PackageFacts:
    """Decrypt a package from ``src`` into ``out`` (seekable) and verify every checksum.

    Raises:
        opsflow.adapters.crypto.CryptoError: the ciphertext is tampered or truncated.
        PackageError: an entry does not match the manifest.

    """
    reader = _HashingReader(src)
    header = read_header(reader)  # type: ignore[arg-type]
    plain_sha = hashlib.sha256()
    plain_size = 0
    for piece in decrypt_chunks(reader, header, keyring):  # type: ignore[arg-type]
        out.write(piece)
        plain_sha.update(piece)
        plain_size += len(piece)
    out.flush()
    out.seek(0)
    with zipfile.ZipFile(out) as zf:
        try:
            manifest = json.loads(zf.read(MANIFEST_NAME))
        except KeyError:
            raise PackageError("package has no manifest.json") from None
        entries = [Entry(**e) for e in manifest.get("entries", [])]
        names = set(zf.namelist()) - {MANIFEST_NAME}
        if names != {e.name for e in entries}:
            raise PackageError(f"zip entries {sorted(names)} differ from the manifest")
        for entry in entries:
            sha = hashlib.sha256()
            size = 0
            with zf.open(entry.name) as fh:
                while block := fh.read(1024 * 1024):
                    sha.update(block)
                    size += len(block)
            if sha.hexdigest() != entry.sha256 or size != entry.bytes:
                raise PackageError(f"{entry.name}: checksum does not match the manifest")
    out.seek(0)
    return PackageFacts(
        snapshot_at=str(manifest.get("snapshot_at", "")),
        entries=entries,
        plaintext_bytes=plain_size,
        plaintext_sha256=plain_sha.hexdigest(),
        ciphertext_bytes=reader.size,
        ciphertext_sha256=reader.sha.hexdigest(),
        key_id=header.key_id,
        manifest=manifest,
    )


def iter_object(s3: S3Client, bucket: str, key: str) -> Iterator[bytes]:
    """Stream an object's bytes."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    yield from body.iter_chunks(1024 * 1024)


__all__ = [
    "Counters",
    "Entry",
    "ModelSql",
    "PackageError",
    "PackageFacts",
    "abort_stray_uploads",
    "object_exists",
    "read_package",
    "write_package",
]
