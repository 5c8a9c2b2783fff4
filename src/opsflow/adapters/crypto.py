"""Authenticated streaming encryption of audit packages: AES-256-GCM in chunks.

Format ``OFAE`` version 1 (written down for operators in ``runbooks/audit-export-nightly.md``)::

    header  = b"OFAE" | 0x01 | chunk_size (uint32 BE) | nonce_prefix (8 bytes) |
              len(key_id) (uint8) | key_id (ASCII)
    chunk i = AES-256-GCM(key, nonce = nonce_prefix | i (uint32 BE),
                          aad = header | final (1 byte: 0x01 on the last chunk, else 0x00),
                          plaintext[i * chunk_size : (i + 1) * chunk_size]) -> ciphertext | tag(16)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; the last one holds 0 to
``chunk_size`` bytes and is the only one with ``final = 1``. The chunk index in the nonce makes
reordering or dropping a chunk fail authentication, the final flag makes truncation at a chunk
boundary fail, and the header in the AAD binds the key id and chunk size to every chunk (the
STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizár). A random nonce prefix per
package keeps (key, nonce) pairs unique across packages.

Keys come from a keyring: ``AUDIT_EXPORT_KEYS`` (``kid1:<base64 32 bytes>,kid2:...``) or the file
``AUDIT_EXPORT_KEYS_FILE`` (the same entries, one per line or comma separated). New packages use
``AUDIT_EXPORT_KEY_ID`` (default: the last entry), and every key in the ring can still decrypt,
so rotating to a new key id leaves old packages readable.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsflow.config import Settings, state_dir

MAGIC = b"OFAE"
VERSION = 1
TAG_BYTES = 16
NONCE_PREFIX_BYTES = 8
DEFAULT_CHUNK_SIZE = 1024 * 1024
# A chunk larger than this is refused on read: a forged header must not make us allocate GiBs.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
_FIXED = struct.Struct(">4sBI8sB")


class CryptoError(Exception):
    """A package cannot be decrypted: unknown key, bad header, tampered or truncated data."""


class KeyringError(Exception):
    """The keyring configuration is unusable (never carries key material in its message)."""


@dataclass(frozen=True)
class Keyring:
    """AES-256 keys by key id, and the id new packages are encrypted with."""

    keys: dict[str, bytes] = field(repr=False)
    active: str

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise KeyringError(f"active key id {self.active!r} is not in the keyring")

    def __repr__(self) -> str:
        return f"Keyring(key_ids={sorted(self.keys)}, active={self.active!r})"

    @classmethod
    def parse(cls, text: str, active: str | None = None) -> Keyring:
        """Parse ``kid:base64key`` entries separated by commas or newlines.

        Args:
            text: The keyring text (``#`` starts a comment line).
            active: Key id for new packages; default the last entry.

        Raises:
            KeyringError: an entry is malformed or a key is not 32 bytes.

        """
        keys: dict[str, bytes] = {}
        last = None
        for raw in text.replace(",", "\n").splitlines():
            entry = raw.strip()
            if not entry or entry.startswith("#"):
                continue
            kid, sep, b64 = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid or len(kid) > 255 or not kid.isascii() or not kid.isprintable():
                raise KeyringError("keyring entry is not 'kid:base64key'")
            try:
                key = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"key {kid!r} is not valid base64") from None
            if len(key) != 32:
                raise KeyringError(f"key {kid!r} is {len(key)} bytes; AES-256 needs 32")
            keys[kid] = key
            last = kid
        if last is None:
            raise KeyringError("the keyring is empty")
        return cls(keys=keys, active=active or last)

    @classmethod
    def from_file(cls, path: Path, active: str | None = None) -> Keyring:
        """Read a keyring file (see :meth:`parse`)."""
        return cls.parse(path.read_text(encoding="utf-8"), active)

    def key(self, kid: str) -> bytes:
        """Return the key with id ``kid``.

        Raises:
            CryptoError: the keyring does not hold it.

        """
        try:
            return self.keys[kid]
        except KeyError:
            raise CryptoError(f"key id {kid!r} is not in the keyring") from None


def new_key_entry(kid: str) -> str:
    """Return a fresh ``kid:base64key`` keyring entry (32 random bytes)."""
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def load_dev_keyring(path: Path, active: str | None = None) -> Keyring:
    """Read the development keyring at ``path``, creating it (mode 600) the first time.

    Only for development stacks: production configures ``AUDIT_EXPORT_KEYS`` or a secret file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_key_entry("dev-1") + "\n")
    return Keyring.from_file(path, active)


def _header(kid: str, chunk_size: int, nonce_prefix: bytes) -> bytes:
    kid_bytes = kid.encode("ascii")
    return _FIXED.pack(MAGIC, VERSION, chunk_size, nonce_prefix, len(kid_bytes)) + kid_bytes


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 2**32:
        raise CryptoError("package too large: more than 2**32 chunks")
    return prefix + struct.pack(">I", index)


class Encryptor:
    """Incremental encryption: feed plaintext with :meth:`update`, end with :meth:`finalize`.

    Output is returned as it becomes available, so memory stays one chunk whatever the size.
    """

    def __init__(self, keyring: Keyring, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError("chunk_size out of range")
        self.key_id = keyring.active
        self._aead = AESGCM(keyring.key(keyring.active))
        self._chunk = chunk_size
        self._prefix = secrets.token_bytes(NONCE_PREFIX_BYTES)
        self.header = _header(self.key_id, chunk_size, self._prefix)
        self._buf = bytearray()
        self._index = 0
        self._started = False
        self._done = False

    def _seal(self, data: bytes, final: bool) -> bytes:
        aad = self.header + (b"\x01" if final else b"\x00")
        out = self._aead.encrypt(_nonce(self._prefix, self._index), data, aad)
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes:
        """Add plaintext; return the ciphertext ready so far (header first)."""
        if self._done:
            raise ValueError("encryptor already finalized")
        out = bytearray()
        if not self._started:
            out += self.header
            self._started = True
        self._buf += data
        # Keep at least one byte back: the last chunk must be sealed with final = 1.
        while len(self._buf) > self._chunk:
            out += self._seal(bytes(self._buf[: self._chunk]), final=False)
            del self._buf[: self._chunk]
        return bytes(out)

    def finalize(self) -> bytes:
        """Seal the last chunk (possibly empty); return the remaining ciphertext."""
        out = self.update(b"")
        self._done = True
        last = self._seal(bytes(self._buf), final=True)
        self._buf.clear()
        return out + last


@dataclass(frozen=True)
class Header:
    """The parsed header of a package."""

    key_id: str
    chunk_size: int
    nonce_prefix: bytes
    raw: bytes


def _read_exact(src: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    left = n
    while left:
        got = src.read(left)
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return b"".join(parts)


def read_header(src: BinaryIO) -> Header:
    """Read and check a package header from ``src``.

    Raises:
        CryptoError: not an OFAE version 1 package.

    """
    fixed = _read_exact(src, _FIXED.size)
    if len(fixed) != _FIXED.size:
        raise CryptoError("not an encrypted audit package: header truncated")
    magic, version, chunk_size, prefix, kid_len = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise CryptoError("not an encrypted audit package: bad magic")
    if version != VERSION:
        raise CryptoError(f"unsupported package format version {version}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise CryptoError("bad chunk size in header")
    kid_raw = _read_exact(src, kid_len)
    if len(kid_raw) != kid_len:
        raise CryptoError("not an encrypted audit package: header truncated")
    try:
        kid = kid_raw.decode("ascii")
    except UnicodeDecodeError:
        raise CryptoError("bad key id in header") from None
    return Header(key_id=kid, chunk_size=chunk_size, nonce_prefix=prefix, raw=fixed + kid_raw)


def decrypt_stream(src: BinaryIO, keyring: Keyring) -> Iterator[bytes]:
    """Yield the plaintext of a package read from ``src``, chunk by chunk.

    Each chunk is authenticated before it is yielded; a consumer that must not act on
    unauthenticated data of a partly valid package should write to a temporary place and
    only use the result once the iterator ended without error.

    Raises:
        CryptoError: unknown key id, tampered, reordered or truncated data.

    """
    yield from decrypt_chunks(src, read_header(src), keyring)


def decrypt_chunks(src: BinaryIO, header: Header, keyring: Keyring) -> Iterator[bytes]:
    """Yield the plaintext after an already read ``header`` (see :func:`decrypt_stream`).

    Raises:
        CryptoError: unknown key id, tampered, reordered or truncated data.

    """
    aead = AESGCM(keyring.key(header.key_id))
    size = header.chunk_size + TAG_BYTES
    index = 0
    current = _read_exact(src, size)
    while True:
        if len(current) < TAG_BYTES:
            raise CryptoError("package truncated: final chunk missing")
        nxt = _read_exact(src, size) if len(current) == size else b""
        final = not nxt
        aad = header.raw + (b"\x01" if final else b"\x00")
        try:
            plain = aead.decrypt(_nonce(header.nonce_prefix, index), current, aad)
        except InvalidTag:
            if final:
                raise CryptoError(
                    f"package tampered or truncated (chunk {index} fails authentication)"
                ) from None
            raise CryptoError(f"package tampered (chunk {index} fails authentication)") from None
        yield plain
        if final:
            return
        index += 1
        current = nxt


def encrypt_bytes(data: bytes, keyring: Keyring, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
    """Encrypt a whole buffer (tests and small payloads)."""
    enc = Encryptor(keyring, chunk_size)
    return enc.update(data) + enc.finalize()


def decrypt_bytes(data: bytes, keyring: Keyring) -> bytes:
    """Decrypt a whole buffer (tests and small payloads)."""
    import io

    return b"".join(decrypt_stream(io.BytesIO(data), keyring))


def iter_encrypt(chunks: Iterable[bytes], keyring: Keyring, chunk_size: int) -> Iterator[bytes]:
    """Encrypt an iterable of plaintext pieces lazily."""
    enc = Encryptor(keyring, chunk_size)
    for piece in chunks:
        out = enc.update(piece)
        if out:
            yield out
    yield enc.finalize()


DEV_KEYRING_FILE = "audit-export.keys"


def keyring_from_settings(settings: Settings) -> Keyring:
    """Build the audit-export keyring from settings.

    ``AUDIT_EXPORT_KEYS`` wins, then ``AUDIT_EXPORT_KEYS_FILE``; outside production with
    neither, a development keyring under the state folder (created once, mode 600).

    Raises:
        KeyringError: no keyring is configured in production, or it is malformed.

    """
    active = settings.audit_export_key_id or None
    if settings.audit_export_keys is not None and settings.audit_export_keys.get_secret_value():
        return Keyring.parse(settings.audit_export_keys.get_secret_value(), active)
    if settings.audit_export_keys_file:
        return Keyring.from_file(Path(settings.audit_export_keys_file), active)
    if settings.is_production:
        raise KeyringError("set AUDIT_EXPORT_KEYS or AUDIT_EXPORT_KEYS_FILE in production")
    return load_dev_keyring(state_dir() / DEV_KEYRING_FILE, active)
