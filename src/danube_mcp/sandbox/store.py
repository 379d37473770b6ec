"""Encrypted SQLite credential store for the sandbox.

Every credential value is encrypted with AES-256-GCM under a fresh 12-byte nonce; the associated data binds
each ciphertext to its owner, service, type and kind, so rows cannot be swapped. Owners are HMACs of API
keys, never the keys. A key-check record lets a wrong key fail loudly at start-up instead of yielding
garbage. SQLite runs off the event loop (``anyio.to_thread``) on one connection guarded by a lock.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import re
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, Self

import anyio.to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_mcp.sandbox.constants import KEY_ENV_VAR
from danube_mcp.sandbox.errors import SandboxKeyError, SandboxStoreError
from danube_mcp.sandbox.keys import (
    KEY_BYTES,
    create_key_file,
    derive_subkey,
    key_file_path,
    key_from_env,
    read_key_file,
)

StoredAs = Literal["value", "reference"]

NONCE_BYTES: Final = 12
SCHEMA_VERSION: Final = "1"
MEMORY: Final = ":memory:"

_KEY_CHECK_PLAINTEXT: Final = b"danube-sandbox key check v1"
_KEY_CHECK_AAD: Final = b"danube-sandbox/v1/key-check"
_VAULT_REF: Final = re.compile(r"vault://[^/#\s]+/[^#\s]+#[^#\s]+")
_ENV_REF: Final = re.compile(r"env://[A-Za-z_][A-Za-z0-9_]*")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
    owner TEXT NOT NULL,
    service_id TEXT NOT NULL,
    credential_type TEXT NOT NULL,
    stored_as TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (owner, service_id)
);
"""

_UPSERT: Final = """
INSERT INTO credentials
    (owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (owner, service_id) DO UPDATE SET
    credential_type = excluded.credential_type,
    stored_as = excluded.stored_as,
    nonce = excluded.nonce,
    ciphertext = excluded.ciphertext,
    fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at,
    version = credentials.version + 1
"""


def classify_value(value: str) -> StoredAs:
    """``reference`` for ``vault://<mount>/<path>#<field>`` or ``env://<NAME>``, else ``value``."""
    if _VAULT_REF.fullmatch(value) or _ENV_REF.fullmatch(value):
        return "reference"
    return "value"


@dataclass(frozen=True, slots=True)
class PutResult:
    stored_as: StoredAs
    updated_at: str
    #: 1 for the first store of (owner, service), +1 for each replacement: gives the commit order.
    version: int


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """Metadata about one stored credential; never the value."""

    service_id: str
    credential_type: str
    stored_as: str
    updated_at: str
    fingerprint: str
    version: int


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class CredentialStore:
    """Use :func:`open_store` to get one. Thread-safe; the async methods never block the event loop."""

    def __init__(self, conn: sqlite3.Connection, key: bytes, db_path: str) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        self._aead = AESGCM(derive_subkey(key, b"encryption"))
        self._owner_key = derive_subkey(key, b"owner")
        self._fingerprint_key = derive_subkey(key, b"fingerprint")
        self.db_path = db_path

    # -- keyed hashes -----------------------------------------------------------------------------

    def owner_id(self, api_key: str) -> str:
        """The owner recorded for an API key: HMAC-SHA256 under a key derived from the encryption key."""
        return hmac.new(self._owner_key, api_key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def fingerprint(self, value: str) -> str:
        """A short keyed fingerprint (8 hex chars of an HMAC): tells values apart, cannot give one back."""
        digest = hmac.new(self._fingerprint_key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:8]

    @staticmethod
    def _aad(owner: str, service_id: str, credential_type: str, stored_as: str) -> bytes:
        return json.dumps(["danube-sandbox/v1", owner, service_id, credential_type, stored_as]).encode()

    # -- operations -------------------------------------------------------------------------------

    async def put(self, api_key: str, service_id: str, credential_type: str, value: str) -> PutResult:
        """Store (or replace) the caller's credential for a service, in one transaction."""
        call = functools.partial(self.put_sync, api_key, service_id, credential_type, value)
        return await anyio.to_thread.run_sync(call)

    async def list_credentials(self, api_key: str) -> list[CredentialInfo]:
        return await anyio.to_thread.run_sync(self.list_credentials_sync, api_key)

    def put_sync(self, api_key: str, service_id: str, credential_type: str, value: str) -> PutResult:
        owner = self.owner_id(api_key)
        stored_as = classify_value(value)
        nonce = os.urandom(NONCE_BYTES)
        aad = self._aad(owner, service_id, credential_type, stored_as)
        ciphertext = self._aead.encrypt(nonce, value.encode("utf-8"), aad)
        fingerprint = self.fingerprint(value)
        with self._lock:
            conn = self._require_open()
            updated_at = _utc_now()
            conn.execute("BEGIN IMMEDIATE")
            try:
                params = (owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint)
                conn.execute(_UPSERT, (*params, updated_at))
                (version,) = conn.execute(
                    "SELECT version FROM credentials WHERE owner = ? AND service_id = ?", (owner, service_id)
                ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return PutResult(stored_as=stored_as, updated_at=updated_at, version=int(version))

    def list_credentials_sync(self, api_key: str) -> list[CredentialInfo]:
        owner = self.owner_id(api_key)
        with self._lock:
            rows = (
                self._require_open()
                .execute(
                    "SELECT service_id, credential_type, stored_as, updated_at, fingerprint, version"
                    " FROM credentials WHERE owner = ? ORDER BY service_id",
                    (owner,),
                )
                .fetchall()
            )
        return [CredentialInfo(str(a), str(b), str(c), str(d), str(e), int(f)) for a, b, c, d, e, f in rows]

    def reveal_for_tests(self, api_key: str, service_id: str) -> str | None:
        """Decrypt one stored credential. For tests only: nothing over HTTP ever calls this."""
        owner = self.owner_id(api_key)
        with self._lock:
            row = (
                self._require_open()
                .execute(
                    "SELECT credential_type, stored_as, nonce, ciphertext FROM credentials"
                    " WHERE owner = ? AND service_id = ?",
                    (owner, service_id),
                )
                .fetchone()
            )
        if row is None:
            return None
        credential_type, stored_as, nonce, ciphertext = row
        aad = self._aad(owner, service_id, credential_type, stored_as)
        return self._aead.decrypt(nonce, ciphertext, aad).decode("utf-8")

    # -- lifecycle --------------------------------------------------------------------------------

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the sandbox credential store is closed")
        return self._conn

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the database (idempotent). In WAL mode this checkpoints and removes the ``-wal`` file."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# -- opening -------------------------------------------------------------------------------------


def _precreate_private(path: str) -> None:
    """Create the database file with mode 0600 (SQLite gives its -wal/-shm files the same mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise SandboxStoreError(f"cannot create sandbox database {path}: {exc}") from None


def _check_key(conn: sqlite3.Connection, key: bytes, source: str, db_path: str) -> None:
    aead = AESGCM(derive_subkey(key, b"encryption"))
    row = conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
    if row is None:
        nonce = os.urandom(NONCE_BYTES)
        record = nonce + aead.encrypt(nonce, _KEY_CHECK_PLAINTEXT, _KEY_CHECK_AAD)
        conn.execute("INSERT INTO meta (name, value) VALUES ('key_check', ?)", (record,))
        return
    record = bytes(row[0])
    try:
        ok = aead.decrypt(record[:NONCE_BYTES], record[NONCE_BYTES:], _KEY_CHECK_AAD) == _KEY_CHECK_PLAINTEXT
    except InvalidTag:
        ok = False
    if not ok:
        raise SandboxKeyError(
            f"the encryption key from {source} is not the key sandbox database {db_path} was created with;"
            f" use the original key (or delete the database to start afresh)"
        )


def _init_schema(conn: sqlite3.Connection, db_path: str) -> bool:
    """Create tables if needed; return whether a key-check record already exists."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)  # not executescript(): that would COMMIT the open transaction
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    elif str(row[0]) != SCHEMA_VERSION:
        raise SandboxStoreError(f"{db_path} has sandbox schema version {row[0]}, expected {SCHEMA_VERSION}")
    return conn.execute("SELECT 1 FROM meta WHERE name = 'key_check'").fetchone() is not None


def open_store(
    db_path: str | os.PathLike[str], key: bytes | None = None, *, environ: Mapping[str, str] | None = None
) -> CredentialStore:
    """Open (creating if needed) the sandbox database at ``db_path`` (or ``":memory:"``).

    The key is ``key`` if given, else ``DANUBE_SANDBOX_KEY`` (base64 of 32 bytes), else the key file
    ``<db_path>.key`` (created with mode 0600 on first use; an in-memory store gets a random key).
    Raises :class:`SandboxKeyError` for a malformed, missing or wrong key and :class:`SandboxStoreError`
    when the database cannot be used.
    """
    path = os.fspath(db_path)
    in_memory = path == MEMORY
    if key is not None:
        if len(key) != KEY_BYTES:
            raise SandboxKeyError(f"the encryption key must be {KEY_BYTES} bytes, got {len(key)}")
        source = "the key argument"
    else:
        key = key_from_env(environ)
        source = KEY_ENV_VAR
    if not in_memory:
        _precreate_private(path)
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SandboxStoreError(f"cannot open sandbox database {path}: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            has_key_check = _init_schema(conn, path)
            if key is None:
                key_file = key_file_path(path)
                source = f"key file {key_file}"
                if in_memory:
                    key = os.urandom(KEY_BYTES)
                elif key_file.exists():
                    key = read_key_file(key_file)
                elif has_key_check:
                    raise SandboxKeyError(
                        f"sandbox database {path} is encrypted but its key file {key_file} is missing;"
                        f" restore it or set {KEY_ENV_VAR}"
                    )
                else:
                    key = create_key_file(key_file)
            _check_key(conn, key, source, path)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        conn.close()
        raise SandboxStoreError(f"cannot use sandbox database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return CredentialStore(conn, key, path)
