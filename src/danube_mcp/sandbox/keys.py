"""The sandbox's 32-byte master key: from the environment or a private 0600 key file, and its subkeys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from danube_mcp.sandbox.constants import KEY_ENV_VAR
from danube_mcp.sandbox.errors import SandboxFileError, SandboxKeyError
from danube_mcp.sandbox.files import create_private, read_private_text

log = logging.getLogger(__name__)

KEY_BYTES: Final = 32


def derive_subkey(key: bytes, label: bytes) -> bytes:
    """A purpose-specific subkey, so the master key itself never keys two different primitives."""
    return hmac.new(key, b"danube-sandbox/v1/" + label, hashlib.sha256).digest()


def decode_key(text: str, source: str) -> bytes:
    """Decode a base64 key of exactly 32 bytes; the error message never contains the key text."""
    stripped = text.strip()
    try:
        key = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        try:
            key = base64.b64decode(stripped, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise SandboxKeyError(
                f"{source} is not valid base64 (expected base64 of 32 random bytes)"
            ) from None
    if len(key) != KEY_BYTES:
        raise SandboxKeyError(f"{source} must be base64 of {KEY_BYTES} bytes, got {len(key)} bytes")
    return key


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key in ``DANUBE_SANDBOX_KEY``, or None when it is not set; malformed → SandboxKeyError."""
    text = (os.environ if environ is None else environ).get(KEY_ENV_VAR)
    return None if text is None else decode_key(text, KEY_ENV_VAR)


def key_file_path(db_path: str | os.PathLike[str]) -> Path:
    """Where the key file of a database lives: ``<db>.key``."""
    return Path(os.fspath(db_path) + ".key")


def read_key_file(path: Path) -> bytes:
    """Read a key file: ours, mode 0600 (no group/other bits), a regular file, not a symbolic link."""
    try:
        text = read_private_text(path, "key file", max_bytes=1024)
    except SandboxFileError as exc:
        raise SandboxKeyError(str(exc)) from None
    return decode_key(text, f"key file {path}")


def create_key_file(path: Path) -> bytes:
    """Create ``path`` (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) holding a fresh random key, and return it.

    Callers hold the database's write lock, so two processes opening one new database cannot race here.
    """
    key = os.urandom(KEY_BYTES)
    try:
        fd = create_private(path, "key file")
    except SandboxFileError as exc:
        raise SandboxKeyError(str(exc)) from None
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("created a new sandbox key file %s", path)
    return key
