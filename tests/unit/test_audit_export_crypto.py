"""The audit package's streaming AES-256-GCM format: round trips, tampering, rotation."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsflow.adapters import crypto
from opsflow.adapters.crypto import CryptoError, Keyring, KeyringError
from opsflow.config import Settings


def _ring(*kids: str, active: str | None = None) -> Keyring:
    return Keyring.parse(",".join(crypto.new_key_entry(k) for k in kids), active)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64, 65, 1000])
def test_round_trip_at_chunk_boundaries(size: int) -> None:
    ring = _ring("k1")
    data = os.urandom(size)
    blob = crypto.encrypt_bytes(data, ring, chunk_size=16)
    assert crypto.decrypt_bytes(blob, ring) == data
    header = crypto.read_header(io.BytesIO(blob))
    assert (header.key_id, header.chunk_size) == ("k1", 16)


def test_incremental_output_stays_one_chunk() -> None:
    ring = _ring("k1")
    enc = crypto.Encryptor(ring, chunk_size=1024)
    outs = [enc.update(b"x" * 100) for _ in range(100)]
    # Nothing is held back beyond one chunk: output arrives as the input grows.
    assert max(len(o) for o in outs) <= len(enc.header) + 1024 + crypto.TAG_BYTES
    blob = b"".join(outs) + enc.finalize()
    assert crypto.decrypt_bytes(blob, ring) == b"x" * 10_000


def _chunks(blob: bytes, header_len: int, chunk: int) -> tuple[bytes, list[bytes]]:
    body = blob[header_len:]
    step = chunk + crypto.TAG_BYTES
    return blob[:header_len], [body[i : i + step] for i in range(0, len(body), step)]


def test_tampered_byte_is_refused() -> None:
    ring = _ring("k1")
    blob = bytearray(crypto.encrypt_bytes(os.urandom(100), ring, chunk_size=32))
    blob[-20] ^= 0x01
    with pytest.raises(CryptoError, match="tampered"):
        crypto.decrypt_bytes(bytes(blob), ring)


def test_reordered_chunks_are_refused() -> None:
    ring = _ring("k1")
    data = os.urandom(100)
    blob = crypto.encrypt_bytes(data, ring, chunk_size=32)
    hlen = len(crypto.read_header(io.BytesIO(blob)).raw)
    head, parts = _chunks(blob, hlen, 32)
    swapped = head + parts[1] + parts[0] + b"".join(parts[2:])
    with pytest.raises(CryptoError):
        crypto.decrypt_bytes(swapped, ring)


@pytest.mark.parametrize("drop", [1, 2])
def test_truncation_at_a_chunk_boundary_is_refused(drop: int) -> None:
    ring = _ring("k1")
    blob = crypto.encrypt_bytes(os.urandom(96), ring, chunk_size=32)
    hlen = len(crypto.read_header(io.BytesIO(blob)).raw)
    head, parts = _chunks(blob, hlen, 32)
    with pytest.raises(CryptoError, match="truncated"):
        crypto.decrypt_bytes(head + b"".join(parts[:-drop]), ring)


def test_header_is_authenticated() -> None:
    ring = _ring("k1")
    blob = bytearray(crypto.encrypt_bytes(os.urandom(50), ring, chunk_size=32))
    blob[12] ^= 0xFF  # a byte of the nonce prefix
    with pytest.raises(CryptoError):
        crypto.decrypt_bytes(bytes(blob), ring)
    with pytest.raises(CryptoError, match="magic"):
        crypto.decrypt_bytes(b"XXXX" + bytes(blob[4:]), ring)


def test_rotation_keeps_old_packages_readable() -> None:
    old = _ring("2026-01")
    old_blob = crypto.encrypt_bytes(b"old package", old)
    rotated = Keyring.parse(
        ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in old.keys.items())
        + ","
        + crypto.new_key_entry("2026-07")
    )
    assert rotated.active == "2026-07"
    new_blob = crypto.encrypt_bytes(b"new package", rotated)
    assert crypto.read_header(io.BytesIO(new_blob)).key_id == "2026-07"
    assert crypto.decrypt_bytes(old_blob, rotated) == b"old package"
    assert crypto.decrypt_bytes(new_blob, rotated) == b"new package"
    # A keyring without the new key cannot read the new package, and says which key is missing.
    with pytest.raises(CryptoError, match="2026-07"):
        crypto.decrypt_bytes(new_blob, old)


def test_documented_format_decrypts_with_plain_aesgcm() -> None:
    # The runbook page's recipe: anyone holding the key decrypts with any AES-GCM library.
    ring = _ring("k1")
    data = os.urandom(70)
    blob = crypto.encrypt_bytes(data, ring, chunk_size=32)
    kid_len = blob[17]
    header = blob[: 18 + kid_len]
    chunk_size = int.from_bytes(blob[5:9], "big")
    prefix = blob[9:17]
    body = blob[len(header) :]
    step = chunk_size + 16
    pieces = [body[i : i + step] for i in range(0, len(body), step)]
    aead = AESGCM(ring.keys["k1"])
    out = b"".join(
        aead.decrypt(
            prefix + i.to_bytes(4, "big"),
            piece,
            header + (b"\x01" if i == len(pieces) - 1 else b"\x00"),
        )
        for i, piece in enumerate(pieces)
    )
    assert out == data


def test_keyring_parsing_errors_never_show_key_material() -> None:
    with pytest.raises(KeyringError, match="32"):
        Keyring.parse("k1:" + base64.b64encode(b"short").decode())
    with pytest.raises(KeyringError, match="base64"):
        Keyring.parse("k1:not base64!!")
    with pytest.raises(KeyringError, match="not in the keyring"):
        _ring("k1", active="k2")
    ring = _ring("k1")
    assert base64.b64encode(ring.keys["k1"]).decode() not in repr(ring)


def test_keyring_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = crypto.new_key_entry("env-1")
    ring = crypto.keyring_from_settings(Settings(_env_file=None, audit_export_keys=entry))
    assert ring.active == "env-1"
    path = tmp_path / "keys"
    path.write_text(crypto.new_key_entry("f-1") + "\n" + crypto.new_key_entry("f-2") + "\n")
    ring = crypto.keyring_from_settings(
        Settings(_env_file=None, audit_export_keys_file=str(path), audit_export_key_id="f-1")
    )
    assert (sorted(ring.keys), ring.active) == (["f-1", "f-2"], "f-1")
    with pytest.raises(KeyringError, match="production"):
        crypto.keyring_from_settings(Settings(_env_file=None, opsflow_env="production"))
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "state"))
    dev = crypto.keyring_from_settings(Settings(_env_file=None))
    again = crypto.keyring_from_settings(Settings(_env_file=None))
    assert dev.keys == again.keys
    assert (tmp_path / "state" / crypto.DEV_KEYRING_FILE).stat().st_mode & 0o777 == 0o600
