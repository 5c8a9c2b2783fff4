"""A minimal streaming zip writer for entries deflated elsewhere (in parallel threads).

``zipfile`` compresses an entry while it is written, so entries are compressed one after the
other on one core. The audit export deflates each model's CSV in its own thread (zlib releases
the GIL) and hands the raw deflate stream here, which frames it as a standard zip: local header
with the data-descriptor flag, the deflate data, a ZIP64 data descriptor, then the central
directory with ZIP64 records. Any unzip tool (and ``zipfile``) reads the result.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR = struct.Struct("<IIQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_ZIP64_EXTRA_LOCAL = struct.Struct("<HHQQ")
_ZIP64_EXTRA_CENTRAL = struct.Struct("<HHQQQ")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_EOCD = struct.Struct("<IHHHHIIH")

VERSION = 45  # ZIP64
FLAGS = 0x0008 | 0x0800  # sizes in a data descriptor; UTF-8 names
DEFLATED = 8
MAX32 = 0xFFFFFFFF


def raw_deflater(level: int) -> zlib._Compress:
    """Return a compressor producing raw deflate (what a zip entry holds)."""
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def _dos_time(moment: datetime) -> tuple[int, int]:
    t = (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2)
    d = ((moment.year - 1980) << 9) | (moment.month << 5) | moment.day
    return t, d


@dataclass
class _Written:
    name: bytes
    offset: int
    crc: int
    compressed: int
    size: int


@dataclass
class ZipStream:
    """Write zip entries to ``write`` (a sink that takes bytes), tracking offsets."""

    write_bytes: Callable[[bytes], object]
    moment: datetime
    offset: int = 0
    _entries: list[_Written] = field(default_factory=list)
    _current: tuple[bytes, int] | None = None

    def _out(self, data: bytes) -> None:
        if data:
            self.write_bytes(data)
            self.offset += len(data)

    def begin(self, name: str) -> None:
        """Write the local header of a deflated entry; its data follows with :meth:`data`."""
        raw = name.encode("utf-8")
        t, d = _dos_time(self.moment)
        extra = _ZIP64_EXTRA_LOCAL.pack(1, 16, 0, 0)
        header = _LOCAL.pack(
            0x04034B50, VERSION, FLAGS, DEFLATED, t, d, 0, MAX32, MAX32, len(raw), len(extra)
        )
        self._current = (raw, self.offset)
        self._out(header + raw + extra)

    def data(self, chunk: bytes) -> None:
        """Write raw deflate bytes of the current entry."""
        self._out(chunk)

    def end(self, crc: int, compressed: int, size: int) -> None:
        """Close the current entry with its CRC-32 and sizes (ZIP64 data descriptor)."""
        assert self._current is not None
        name, offset = self._current
        self._out(_DESCRIPTOR.pack(0x08074B50, crc, compressed, size))
        self._entries.append(_Written(name, offset, crc, compressed, size))
        self._current = None

    def add_bytes(self, name: str, content: bytes, level: int) -> None:
        """Add a small entry from memory (the manifest)."""
        comp = raw_deflater(level)
        body = comp.compress(content) + comp.flush()
        self.begin(name)
        self.data(body)
        self.end(zlib.crc32(content), len(body), len(content))

    def close(self) -> None:
        """Write the central directory and the (ZIP64) end records."""
        t, d = _dos_time(self.moment)
        start = self.offset
        for e in self._entries:
            extra = _ZIP64_EXTRA_CENTRAL.pack(1, 24, e.size, e.compressed, e.offset)
            self._out(
                _CENTRAL.pack(
                    0x02014B50,
                    VERSION | (3 << 8),  # made by: unix
                    VERSION,
                    FLAGS,
                    DEFLATED,
                    t,
                    d,
                    e.crc,
                    MAX32,
                    MAX32,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0o100644 << 16,
                    MAX32,
                )
                + e.name
                + extra
            )
        size = self.offset - start
        n = len(self._entries)
        z64 = self.offset
        self._out(_ZIP64_EOCD.pack(0x06064B50, 44, VERSION, VERSION, 0, 0, n, n, size, start))
        self._out(_ZIP64_LOCATOR.pack(0x07064B50, 0, z64, 1))
        self._out(_EOCD.pack(0x06054B50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF), MAX32, MAX32, 0))
