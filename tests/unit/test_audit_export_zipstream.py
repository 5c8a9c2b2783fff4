"""The parallel export's zip framing: standard readers accept it, CRCs and sizes hold."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from datetime import UTC, datetime

from opsflow.adapters import zipstream


def _deflated(data: bytes, level: int = 6) -> bytes:
    comp = zipstream.raw_deflater(level)
    return comp.compress(data) + comp.flush()


def test_entries_deflated_elsewhere_read_back_with_zipfile() -> None:
    buf = io.BytesIO()
    moment = datetime(2026, 11, 21, 2, 0, 7, tzinfo=UTC)
    zs = zipstream.ZipStream(buf.write, moment)
    payloads = {
        "audit_case_snapshot.csv": b"id,title\n" + b"1,a\n" * 50_000,
        "audit_assignment_snapshot.csv": os.urandom(70_000),
        "empty.csv": b"",
    }
    for name, data in payloads.items():
        body = _deflated(data)
        zs.begin(name)
        # Written in pieces, as the threads hand them over.
        for i in range(0, len(body), 4096):
            zs.data(body[i : i + 4096])
        zs.end(zlib.crc32(data), len(body), len(data))
    zs.add_bytes("manifest.json", b'{"ok": true}', 6)
    zs.close()
    assert zs.offset == len(buf.getvalue())
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [*payloads, "manifest.json"]
        for name, data in payloads.items():
            assert zf.read(name) == data
            info = zf.getinfo(name)
            assert info.date_time == (2026, 11, 21, 2, 0, 6)
            assert info.compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("manifest.json") == b'{"ok": true}'


def test_a_wrong_crc_is_detected_by_readers() -> None:
    buf = io.BytesIO()
    zs = zipstream.ZipStream(buf.write, datetime(2026, 1, 1, tzinfo=UTC))
    data = b"x" * 1000
    body = _deflated(data)
    zs.begin("a.csv")
    zs.data(body)
    zs.end(zlib.crc32(data) ^ 1, len(body), len(data))
    zs.close()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        assert zf.testzip() == "a.csv"
