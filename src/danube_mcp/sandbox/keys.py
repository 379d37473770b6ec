"""The sandbox's 32-byte master key: from the environment or a 0600 key file, and its derived subkeys."""

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
from danube_mcp.sandbox.errors import SandboxKeyError

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
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise SandboxKeyError(f"cannot read key file {path}: {exc}") from None
    if os.name == "posix" and mode & 0o077:
        log.warning("key file %s is readable by other users; chmod 600 it", path)
    return decode_key(text, f"key file {path}")


def create_key_file(path: Path) -> bytes:
    """Create ``path`` (O_CREAT|O_EXCL, mode 0600) holding a fresh random key, and return the key.

    Callers hold the database's write lock, so two processes opening one new database cannot race here.
    """
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise SandboxKeyError(f"cannot create key file {path}: {exc}") from None
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # the umask can only remove bits; pin exactly 0600
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("created a new sandbox key file %s", path)
    return key
