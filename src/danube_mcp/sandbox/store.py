"""Encrypted SQLite credential store for the sandbox.

Every credential value is encrypted with AES-256-GCM under a fresh 12-byte nonce; the associated data binds
each ciphertext to every stored column of its row (see :mod:`danube_mcp.sandbox.schema`), so rows cannot be
swapped and no metadata column can be edited unnoticed. Owners are HMACs of API keys, never the keys. A
key-check record lets a wrong key fail loudly at start-up instead of yielding garbage. The database, its
``-wal``/``-shm`` files and its key file must be private (see :mod:`danube_mcp.sandbox.files`). SQLite
runs off the event loop (``anyio.to_thread``) on one connection guarded by a lock.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self

import anyio.to_thread
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_mcp.sandbox.constants import KEY_ENV_VAR
from danube_mcp.sandbox.errors import (
    SandboxFileError,
    SandboxIntegrityError,
    SandboxKeyError,
    SandboxStoreError,
)
from danube_mcp.sandbox.files import (
    create_private,
    ensure_private_folder,
    lstat_private,
    open_private,
    os_cause,
)
from danube_mcp.sandbox.keys import (
    KEY_BYTES,
    create_key_file,
    derive_subkey,
    key_file_path,
    key_from_env,
    read_key_file,
)
from danube_mcp.sandbox.schema import (
    NONCE_BYTES,
    SELECT_ALL_CREDENTIALS,
    SELECT_API_KEY_BY_HASH,
    SELECT_API_KEYS_OF_ACCOUNT,
    SELECT_ONE_CREDENTIAL,
    SELECT_OWNER_CREDENTIALS,
    WRITE_CREDENTIAL,
    api_key_mac,
    check_key,
    credential_aad,
    init_schema,
    upgrade_from_v1,
)

log = logging.getLogger(__name__)

StoredAs = Literal["value", "reference"]

MEMORY: Final = ":memory:"
#: Files SQLite keeps beside a database; each must be as private as the database itself.
SIDE_FILES: Final = ("-wal", "-shm", "-journal")
#: API keys shorter than this get no prefix in key metadata (four characters would give away too much).
MIN_KEY_CHARS_FOR_PREFIX: Final = 24

_VAULT_REF: Final = re.compile(r"vault://[^/#\s]+/[^#\s]+#[^#\s]+")
_ENV_REF: Final = re.compile(r"env://[A-Za-z_][A-Za-z0-9_]*")


def classify_value(value: str) -> StoredAs:
    """``reference`` for ``vault://<mount>/<path>#<field>`` or ``env://<NAME>``, else ``value``."""
    if _VAULT_REF.fullmatch(value) or _ENV_REF.fullmatch(value):
        return "reference"
    return "value"


def key_prefix(api_key: str) -> str:
    """A non-secret hint to tell keys apart: the first 4 characters of a long key, else nothing."""
    return api_key[:4] if len(api_key) >= MIN_KEY_CHARS_FOR_PREFIX else ""


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
    #: False when the row failed authentication (a column or the ciphertext changed outside the sandbox).
    intact: bool = True


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """Metadata about one issued API key; never the key."""

    id: str
    account: str
    name: str
    prefix: str
    created_at: str


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _as_int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return 0


class CredentialStore:
    """Use :func:`open_store` to get one. Thread-safe; the async methods never block the event loop."""

    def __init__(self, conn: sqlite3.Connection, key: bytes, db_path: str) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        self._aead = AESGCM(derive_subkey(key, b"encryption"))
        self._owner_key = derive_subkey(key, b"owner")
        self._fingerprint_key = derive_subkey(key, b"fingerprint")
        self._api_key_mac_key = derive_subkey(key, b"api-key-row")
        self.db_path = db_path
        #: How many stored credentials failed authentication when the store was opened.
        self.integrity_failures = 0

    # -- keyed hashes -----------------------------------------------------------------------------

    def owner_id(self, api_key: str) -> str:
        """The owner recorded for an API key: HMAC-SHA256 under a key derived from the encryption key."""
        return hmac.new(self._owner_key, api_key.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def fingerprint(self, value: str) -> str:
        """A short keyed fingerprint (8 hex chars of an HMAC): tells values apart, cannot give one back."""
        digest = hmac.new(self._fingerprint_key, value.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:8]

    def _open_row(self, row: tuple[object, ...]) -> bytes | None:
        """Decrypt a credential row (columns in CREDENTIAL_COLUMNS order); None when it fails to verify."""
        (owner, service_id, ctype, stored_as, nonce, ciphertext, fingerprint, updated_at, version) = row
        if not isinstance(nonce, bytes) or not isinstance(ciphertext, bytes):
            return None
        aad = credential_aad(owner, service_id, ctype, stored_as, fingerprint, updated_at, version)
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except (InvalidTag, ValueError):
            return None

    # -- credentials ------------------------------------------------------------------------------

    async def put(self, api_key: str, service_id: str, credential_type: str, value: str) -> PutResult:
        """Store (or replace) the caller's credential for a service, in one transaction."""
        return await self.put_for(self.owner_id(api_key), service_id, credential_type, value)

    async def put_for(self, owner: str, service_id: str, credential_type: str, value: str) -> PutResult:
        """Like :meth:`put`, for an owner (account) already resolved from an API key."""
        call = functools.partial(self.put_for_sync, owner, service_id, credential_type, value)
        return await anyio.to_thread.run_sync(call)

    async def list_credentials(self, api_key: str) -> list[CredentialInfo]:
        return await self.list_credentials_for(self.owner_id(api_key))

    async def list_credentials_for(self, owner: str) -> list[CredentialInfo]:
        return await anyio.to_thread.run_sync(self.list_credentials_for_sync, owner)

    def put_sync(self, api_key: str, service_id: str, credential_type: str, value: str) -> PutResult:
        return self.put_for_sync(self.owner_id(api_key), service_id, credential_type, value)

    def put_for_sync(self, owner: str, service_id: str, credential_type: str, value: str) -> PutResult:
        stored_as = classify_value(value)
        fingerprint = self.fingerprint(value)
        plaintext = value.encode("utf-8")
        with self._lock:
            conn = self._require_open()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT version FROM credentials WHERE owner = ? AND service_id = ?", (owner, service_id)
                ).fetchone()
                version = 1 if row is None else _as_int(row[0]) + 1
                updated_at = _utc_now()
                nonce = os.urandom(NONCE_BYTES)
                aad = credential_aad(
                    owner, service_id, credential_type, stored_as, fingerprint, updated_at, version
                )
                ciphertext = self._aead.encrypt(nonce, plaintext, aad)
                conn.execute(
                    WRITE_CREDENTIAL,
                    (
                        owner,
                        service_id,
                        credential_type,
                        stored_as,
                        nonce,
                        ciphertext,
                        fingerprint,
                        updated_at,
                        version,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return PutResult(stored_as=stored_as, updated_at=updated_at, version=version)

    def list_credentials_sync(self, api_key: str) -> list[CredentialInfo]:
        return self.list_credentials_for_sync(self.owner_id(api_key))

    def list_credentials_for_sync(self, owner: str) -> list[CredentialInfo]:
        """The owner's credentials, each verified (decrypted and dropped): ``intact`` says whether it held."""
        with self._lock:
            rows = (
                self._require_open()
                .execute(
                    SELECT_OWNER_CREDENTIALS,
                    (owner,),
                )
                .fetchall()
            )
        infos = []
        for row in rows:
            intact = self._open_row(tuple(row)) is not None
            _, service_id, ctype, stored_as, _, _, fingerprint, updated_at, version = row
            infos.append(
                CredentialInfo(
                    str(service_id),
                    str(ctype),
                    str(stored_as),
                    str(updated_at),
                    str(fingerprint),
                    _as_int(version),
                    intact,
                )
            )
        return infos

    def reveal_for_tests(self, api_key: str, service_id: str) -> str | None:
        """Decrypt one stored credential. For tests only: nothing over HTTP ever calls this.

        Raises :class:`SandboxIntegrityError` when the row (any column of it) was changed."""
        owner = self.owner_id(api_key)
        with self._lock:
            row = (
                self._require_open()
                .execute(
                    SELECT_ONE_CREDENTIAL,
                    (owner, service_id),
                )
                .fetchone()
            )
        if row is None:
            return None
        plaintext = self._open_row(tuple(row))
        if plaintext is None:
            raise SandboxIntegrityError(
                f"the stored credential for {service_id} failed verification:"
                " it was changed outside the sandbox"
            )
        return plaintext.decode("utf-8")

    def count_integrity_failures_sync(self) -> int:
        """Verify every stored credential; return how many fail (done once when the store opens)."""
        with self._lock:
            rows = self._require_open().execute(SELECT_ALL_CREDENTIALS).fetchall()
        return sum(1 for row in rows if self._open_row(tuple(row)) is None)

    # -- API keys issued by the device flow -------------------------------------------------------

    def issue_api_key_sync(self, account: str, name: str) -> tuple[str, ApiKeyInfo]:
        """Create a new random API key that reaches ``account``'s credentials; return it with its metadata.

        Only the key's HMAC is stored: the key itself is returned once and never kept."""
        api_key = secrets.token_urlsafe(32)
        info = ApiKeyInfo(
            id=f"key_{secrets.token_hex(8)}",
            account=account,
            name=name,
            prefix=key_prefix(api_key),
            created_at=_utc_now(),
        )
        columns = (info.id, self.owner_id(api_key), account, name, info.prefix, info.created_at)
        with self._lock:
            conn = self._require_open()
            conn.execute(
                "INSERT INTO api_keys (id, key_hash, account, name, prefix, created_at, mac)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*columns, api_key_mac(self._api_key_mac_key, columns)),
            )
        return api_key, info

    def _api_key_rows(self, query: str, param: str) -> list[ApiKeyInfo]:
        with self._lock:
            rows = (
                self._require_open()
                .execute(
                    query,
                    (param,),
                )
                .fetchall()
            )
        infos = []
        for row in rows:
            *columns, mac = row
            if not isinstance(mac, str) or not hmac.compare_digest(
                mac, api_key_mac(self._api_key_mac_key, tuple(columns))
            ):
                log.warning("an API key row in %s failed verification and is ignored", self.db_path)
                continue
            key_id, _, account, name, prefix, created_at = columns
            infos.append(ApiKeyInfo(str(key_id), str(account), str(name), str(prefix), str(created_at)))
        return infos

    def account_for_key_sync(self, api_key: str) -> str | None:
        """The account an issued API key reaches, or None for an unknown (or tampered) key."""
        found = self._api_key_rows(SELECT_API_KEY_BY_HASH, self.owner_id(api_key))
        return found[0].account if found else None

    def list_api_keys_sync(self, account: str) -> list[ApiKeyInfo]:
        return sorted(
            self._api_key_rows(SELECT_API_KEYS_OF_ACCOUNT, account),
            key=lambda info: (info.created_at, info.id),
        )

    async def issue_api_key(self, account: str, name: str) -> tuple[str, ApiKeyInfo]:
        return await anyio.to_thread.run_sync(self.issue_api_key_sync, account, name)

    async def account_for_key(self, api_key: str) -> str | None:
        return await anyio.to_thread.run_sync(self.account_for_key_sync, api_key)

    async def list_api_keys(self, account: str) -> list[ApiKeyInfo]:
        return await anyio.to_thread.run_sync(self.list_api_keys_sync, account)

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


def _open_db_file(path: str) -> int:
    """Open the database file ourselves (create it 0600 if missing), never through a link, and keep the
    descriptor until SQLite has opened the same file (same device and inode), so a swap is caught.

    The descriptor must be closed before SQLite takes any lock (see :func:`_sqlite_connect`)."""
    if lstat_private(path, "sandbox database") is None:
        return create_private(path, "sandbox database")
    return open_private(path, "sandbox database", write=True)


def _check_side_files(path: str) -> None:
    for suffix in SIDE_FILES:
        lstat_private(path + suffix, "sandbox database file")


def _same_file(fd: int, path: str) -> None:
    held = os.fstat(fd)
    try:
        now = os.lstat(path)
    except OSError as exc:
        raise SandboxFileError(
            f"sandbox database {path} disappeared while opening: {os_cause(exc)}"
        ) from None
    if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
        raise SandboxFileError(f"sandbox database {path} was replaced while the sandbox was opening it")


def _key_file_exists(key_file: Path) -> bool:
    return os.path.lexists(key_file)  # a link counts as present, and is then refused, never followed


def open_store(
    db_path: str | os.PathLike[str], key: bytes | None = None, *, environ: Mapping[str, str] | None = None
) -> CredentialStore:
    """Open (creating if needed) the sandbox database at ``db_path`` (or ``":memory:"``).

    The key is ``key`` if given, else ``DANUBE_SANDBOX_KEY`` (base64 of 32 bytes), else the key file
    ``<db_path>.key`` (created with mode 0600 on first use; an in-memory store gets a random key).
    Missing folders are created with mode 0700. The database, its ``-wal``/``-shm`` files and the key
    file must belong to the current user, be closed to group and others, and not be symbolic links.
    Raises :class:`SandboxKeyError` for a malformed, missing or wrong key, :class:`SandboxFileError`
    for an unsafe or unusable file, and :class:`SandboxStoreError` when the database cannot be used.
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
    guard_fd: int | None = None
    if not in_memory:
        ensure_private_folder(Path(os.path.abspath(path)).parent)
        _check_side_files(path)
        guard_fd = _open_db_file(path)
    return _connect(path, key, source, in_memory, guard_fd)


def _sqlite_connect(path: str, guard_fd: int | None) -> sqlite3.Connection:
    """Let SQLite open ``path`` (it opens the file but takes no lock yet), check it is the file behind
    ``guard_fd``, and close ``guard_fd`` before any statement runs.

    SQLite's locks are POSIX record locks, and a process loses all of them on a file the moment it
    closes *any* descriptor of that file. In WAL mode a connection takes a shared lock on the database
    file with its first statement and keeps it until it closes: that lock is how other processes know it
    is there. Closing our descriptor after that would silently drop the lock; the next process to close
    its connection (a second sandbox, a reader, a backup) would then see itself as the last one,
    checkpoint and delete the ``-wal``/``-shm`` files under our feet, and every later commit (each
    acknowledged with a 200) would go into a deleted file and be lost at the next crash."""
    try:
        try:
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SandboxStoreError(f"cannot open sandbox database {path}: {exc}") from None
        if guard_fd is not None:
            try:
                _same_file(guard_fd, path)
            except BaseException:
                conn.close()
                raise
    finally:
        if guard_fd is not None:
            os.close(guard_fd)  # before the first statement: SQLite holds no lock on the file yet
    return conn


def _connect(
    path: str, key: bytes | None, source: str, in_memory: bool, guard_fd: int | None
) -> CredentialStore:
    """Open the database (closing ``guard_fd``, see :func:`_sqlite_connect`) and prepare it for use."""
    conn = _sqlite_connect(path, guard_fd)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            schema_version, has_key_check = init_schema(conn, path)
            if key is None:
                key_file = key_file_path(path)
                source = f"key file {key_file}"
                if in_memory:
                    key = os.urandom(KEY_BYTES)
                elif _key_file_exists(key_file):
                    key = read_key_file(key_file)
                elif has_key_check:
                    raise SandboxKeyError(
                        f"sandbox database {path} is encrypted but its key file {key_file} is missing;"
                        f" restore it or set {KEY_ENV_VAR}"
                    )
                else:
                    key = create_key_file(key_file)
            check_key(conn, key, source, path)
            if schema_version == "1":
                upgrade_from_v1(conn, AESGCM(derive_subkey(key, b"encryption")), path)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if not in_memory:
            _check_side_files(path)  # the ones SQLite just created are ours and 0600, like the database
    except sqlite3.Error as exc:
        conn.close()
        raise SandboxStoreError(f"cannot use sandbox database {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    store = CredentialStore(conn, key, path)
    store.integrity_failures = store.count_integrity_failures_sync()
    if store.integrity_failures:
        log.warning(
            "sandbox database %s: %d stored credential(s) failed verification (changed outside the"
            " sandbox); they are listed as tampered and unreadable until stored again",
            path,
            store.integrity_failures,
        )
    return store
