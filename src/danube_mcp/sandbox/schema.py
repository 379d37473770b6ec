"""The sandbox database's schema, its row authentication, and upgrades of older databases.

Schema 2 binds every stored column of a credential row into the AES-GCM associated data (owner, service
id, credential type, stored_as, fingerprint, updated_at, version): editing any of them, or moving a
ciphertext to another row, makes the row fail to decrypt. API-key rows carry an HMAC over all their
columns. Schema-1 databases (whose associated data covered only owner, service, type and stored_as)
are upgraded when opened: each row that verifies under the old rule is re-encrypted under the new one;
a row that does not verify is left as it is and so keeps failing. Rows that already verify under schema 2
are kept, so setting the version marker back launders nothing and breaks nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sqlite3
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_mcp.sandbox.errors import SandboxKeyError, SandboxStoreError
from danube_mcp.sandbox.keys import derive_subkey

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = "2"
NONCE_BYTES: Final = 12

_KEY_CHECK_PLAINTEXT: Final = b"danube-sandbox key check v1"
_KEY_CHECK_AAD: Final = b"danube-sandbox/v1/key-check"

_TABLES: Final = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS credentials (
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
)""",
    # API keys issued through the device flow. key_hash is the keyed HMAC of the key (never the key);
    # account is the owner whose credentials the key reaches; mac authenticates all other columns.
    """CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    mac TEXT NOT NULL
)""",
)

# Credential rows are always read and written with all columns in this order (see credential_aad).
SELECT_ALL_CREDENTIALS: Final = (
    "SELECT owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint, updated_at,"
    " version"
    " FROM credentials"
)
SELECT_OWNER_CREDENTIALS: Final = (
    "SELECT owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint, updated_at,"
    " version"
    " FROM credentials WHERE owner = ? ORDER BY service_id"
)
SELECT_ONE_CREDENTIAL: Final = (
    "SELECT owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint, updated_at,"
    " version"
    " FROM credentials WHERE owner = ? AND service_id = ?"
)
WRITE_CREDENTIAL: Final = (
    "INSERT OR REPLACE INTO credentials"
    " (owner, service_id, credential_type, stored_as, nonce, ciphertext, fingerprint, updated_at, version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
SELECT_API_KEY_BY_HASH: Final = (
    "SELECT id, key_hash, account, name, prefix, created_at, mac FROM api_keys WHERE key_hash = ?"
)
SELECT_API_KEYS_OF_ACCOUNT: Final = (
    "SELECT id, key_hash, account, name, prefix, created_at, mac FROM api_keys WHERE account = ?"
)


def credential_aad(
    owner: object,
    service_id: object,
    credential_type: object,
    stored_as: object,
    fingerprint: object,
    updated_at: object,
    version: object,
) -> bytes:
    """Associated data of a schema-2 credential row: every stored column except nonce and ciphertext.

    Values are bound with their SQLite types (a version edited into the text ``"3"`` no longer matches
    the integer 3)."""
    fields = [owner, service_id, credential_type, stored_as, fingerprint, updated_at, version]
    return json.dumps(["danube-sandbox/v2/credential", *fields]).encode("utf-8", "surrogatepass")


def credential_aad_v1(owner: object, service_id: object, credential_type: object, stored_as: object) -> bytes:
    """Associated data of a schema-1 row (only used to verify rows while upgrading them)."""
    return json.dumps(["danube-sandbox/v1", owner, service_id, credential_type, stored_as]).encode(
        "utf-8", "surrogatepass"
    )


def api_key_mac(mac_key: bytes, row: tuple[object, ...]) -> str:
    """HMAC over an api_keys row (id, key_hash, account, name, prefix, created_at)."""
    data = json.dumps(["danube-sandbox/v2/api-key", *row]).encode("utf-8", "surrogatepass")
    return hmac.new(mac_key, data, hashlib.sha256).hexdigest()


def init_schema(conn: sqlite3.Connection, db_path: str) -> tuple[str, bool]:
    """Create missing tables; return the database's schema version and whether a key check exists.

    Runs inside the caller's transaction (so not ``executescript``, which would commit it)."""
    for statement in _TABLES:
        conn.execute(statement)
    row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        version = SCHEMA_VERSION
    else:
        version = str(row[0])
        if version not in ("1", SCHEMA_VERSION):
            raise SandboxStoreError(
                f"{db_path} has sandbox schema version {version}, expected {SCHEMA_VERSION}"
            )
    has_key_check = conn.execute("SELECT 1 FROM meta WHERE name = 'key_check'").fetchone() is not None
    return version, has_key_check


def check_key(conn: sqlite3.Connection, key: bytes, source: str, db_path: str) -> None:
    """Record a key check in a new database; in an existing one, refuse a key it was not created with."""
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


def upgrade_from_v1(conn: sqlite3.Connection, aead: AESGCM, db_path: str) -> None:
    """Re-encrypt schema-1 rows so the associated data covers every column; runs in the open transaction."""
    rows = conn.execute(SELECT_ALL_CREDENTIALS).fetchall()
    upgraded = failed = 0
    for owner, service_id, ctype, stored_as, nonce, ciphertext, fingerprint, updated_at, version in rows:
        aad = credential_aad(owner, service_id, ctype, stored_as, fingerprint, updated_at, version)
        try:
            aead.decrypt(bytes(nonce), bytes(ciphertext), aad)
        except (InvalidTag, TypeError, ValueError):
            pass
        else:
            continue  # already a schema-2 row (the version marker was set back): keep it as it is
        try:
            value = aead.decrypt(
                bytes(nonce), bytes(ciphertext), credential_aad_v1(owner, service_id, ctype, stored_as)
            )
        except (InvalidTag, TypeError, ValueError):
            failed += 1
            continue
        new_nonce = os.urandom(NONCE_BYTES)
        conn.execute(
            "UPDATE credentials SET nonce = ?, ciphertext = ? WHERE owner = ? AND service_id = ?",
            (new_nonce, aead.encrypt(new_nonce, value, aad), owner, service_id),
        )
        upgraded += 1
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION,))
    log.info("upgraded sandbox database %s to schema %s (%d rows)", db_path, SCHEMA_VERSION, upgraded)
    if failed:
        log.warning(
            "sandbox database %s: %d stored credential(s) did not verify while upgrading; they stay"
            " unreadable until stored again",
            db_path,
            failed,
        )
