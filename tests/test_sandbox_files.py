"""The sandbox's files from the outside: a real ``danube-sandbox`` refuses planted, open or linked files,
names the real cause of folder problems, and detects edited metadata columns (issue 12 item 8, issue 15
item 6).

Ownership tests chown files to uid 65534 and so need root; the read-only tests mount a read-only file
system in a private mount namespace (``unshare -m``), which needs root too. Without root they skip.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from danube_mcp.sandbox import DEMO_API_KEY, KEY_ENV_VAR, SandboxIntegrityError, open_store
from danube_mcp.sandbox.keys import derive_subkey
from danube_mcp.sandbox.schema import credential_aad_v1
from sandbox_proc import sandbox_command, sandbox_env, start_sandbox

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-files-5e1b9c0d7a3f-do-not-leak"
OPENAI = "svc_openai_001"
GITHUB = "svc_github_001"
NOBODY = 65534
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (chown to another uid, mount namespaces)")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


def run_sandbox(
    db: Path | str, *, user: int | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or []), *sandbox_command(db)]
    return subprocess.run(command, env=sandbox_env(), capture_output=True, text=True, timeout=60, check=False)


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line that names each fragment; no canary anywhere."""
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("danube-sandbox: error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "No such file or directory" not in line
    assert CANARY not in result.stderr
    return line


@pytest.fixture
def made_db(tmp_path: Path) -> Iterator[Path]:
    """A database (and key file) holding the canary, created the normal way, closed."""
    db = tmp_path / "data" / "sb.db"
    with open_store(db) as store:
        store.put_sync(DEMO_API_KEY, OPENAI, "bearer", CANARY)
        store.put_sync(DEMO_API_KEY, GITHUB, "api_key", "env://GITHUB_TOKEN")
    yield db


# -- creation -------------------------------------------------------------------------------------


async def test_missing_folders_are_created_0700_and_files_0600(tmp_path: Path) -> None:
    os.umask(0o022)  # a usual umask: the sandbox must still pin 0700/0600 exactly
    db = tmp_path / "a" / "b" / "sb.db"
    with start_sandbox(tmp_path, db_path=db) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": DEMO_API_KEY}) as c:
            body = {"service_id": OPENAI, "credential_type": "bearer", "credential_value": CANARY}
            assert (await c.post("/v1/credentials/store", json=body)).status_code == 200
        side_files = [p for p in db.parent.iterdir() if p.name != db.name]
        assert {p.name for p in side_files} >= {"sb.db.key", "sb.db-wal", "sb.db-shm"}
        for path in [db, *side_files]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert CANARY not in sandbox.stderr_text()


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["db", "key", "wal", "shm"])
def test_file_open_to_others_is_refused(made_db: Path, which: str) -> None:
    target = {"db": made_db, "key": Path(f"{made_db}.key")}.get(which) or Path(f"{made_db}-{which}")
    if not target.exists():
        target.write_bytes(b"")  # a planted side file
    target.chmod(0o644)
    assert_refused(run_sandbox(made_db), str(target), "mode 0644", f"chmod 600 {target}")


@needs_root
@pytest.mark.parametrize("which", ["db", "key", "wal"])
def test_file_owned_by_another_user_is_refused(made_db: Path, which: str) -> None:
    target = {"db": made_db, "key": Path(f"{made_db}.key")}.get(which) or Path(f"{made_db}-{which}")
    if not target.exists():
        target.write_bytes(b"")
        target.chmod(0o600)
    os.chown(target, NOBODY, NOBODY)
    assert_refused(run_sandbox(made_db), str(target), f"another user (uid {NOBODY}")


@pytest.mark.parametrize("which", ["db", "key", "wal", "shm"])
def test_symlinks_are_never_followed(made_db: Path, tmp_path: Path, which: str) -> None:
    target = {"db": made_db, "key": Path(f"{made_db}.key")}.get(which) or Path(f"{made_db}-{which}")
    elsewhere = tmp_path / f"real-{which}"
    if target.exists():
        target.rename(elsewhere)
    else:
        elsewhere.write_bytes(b"")
    elsewhere.chmod(0o600)
    target.symlink_to(elsewhere)
    assert_refused(run_sandbox(made_db), str(target), "symbolic link")


def test_dangling_key_file_link_is_refused_not_replaced(tmp_path: Path) -> None:
    db = tmp_path / "sb.db"
    planted = tmp_path / "attacker-chosen.key"
    Path(f"{db}.key").symlink_to(planted)
    assert_refused(run_sandbox(db), f"{db}.key", "symbolic link")
    assert not planted.exists()


def test_folder_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    assert_refused(run_sandbox(shared / "sb.db"), str(shared), "writable by other users")
    assert list(shared.iterdir()) == []


@needs_root
def test_folder_writable_by_a_foreign_group_is_refused_own_group_is_not(tmp_path: Path) -> None:
    folder = tmp_path / "grp"
    folder.mkdir()
    folder.chmod(0o770)
    os.chown(folder, -1, NOBODY)  # group write for someone else's group: they could plant files
    assert_refused(run_sandbox(folder / "sb.db"), str(folder), "writable by other users")
    os.chown(folder, -1, os.getegid())  # user private group (umask 002): tolerated
    with open_store(folder / "sb.db") as store:
        assert store.integrity_failures == 0


# -- folder problems name the real cause ----------------------------------------------------------


def test_parent_that_is_a_file_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert_refused(run_sandbox(blocker / "sub" / "sb.db"), str(blocker), "is a file, not a folder")


def test_permission_denied_says_so(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    prefix: list[str] = []
    if IS_ROOT:
        # Root ignores permissions; a folder of another user's plus a root without capabilities
        # (setpriv) gives the real EACCES an ordinary user meets.
        tool = shutil.which("setpriv")
        if tool is None:
            pytest.skip("needs setpriv(1) to drop root's capabilities")
        os.chown(locked, NOBODY, NOBODY)
        prefix = [tool, "--bounding-set=-all", "--inh-caps=-all", "--"]
    locked.chmod(0o555)
    db = locked / "sub" / "sb.db"
    line = assert_refused(run_sandbox(db, prefix=prefix), str(db.parent), "permission denied (EACCES)")
    assert "cannot create sandbox folder" in line


def _unshare() -> list[str]:
    tool = shutil.which("unshare")
    if not IS_ROOT or tool is None or sys.platform != "linux":
        pytest.skip("needs root and unshare(1) for a private read-only mount")
    return [tool, "-m", "--"]


@needs_root
def test_read_only_file_system_says_erofs(tmp_path: Path) -> None:
    mount_point = tmp_path / "ro"
    mount_point.mkdir(mode=0o700)
    db = mount_point / "sub" / "sb.db"
    script = 'mount -t tmpfs -o ro,mode=0700 none "$1" && shift && exec "$@"'
    prefix = [*_unshare(), "sh", "-c", script, "sh", str(mount_point)]
    line = assert_refused(run_sandbox(db, prefix=prefix), str(db.parent), "read-only (EROFS)")
    assert "cannot create sandbox folder" in line


@needs_root
def test_existing_database_on_read_only_file_system_says_erofs(made_db: Path) -> None:
    folder = made_db.parent
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    prefix = [*_unshare(), "sh", "-c", script, "sh", str(folder)]
    assert_refused(run_sandbox(made_db, prefix=prefix), str(made_db), "read-only (EROFS)")


# -- metadata columns are authenticated -----------------------------------------------------------

TAMPERS = {
    "credential_type": "UPDATE credentials SET credential_type = 'api_key' WHERE service_id = ?",
    "stored_as": "UPDATE credentials SET stored_as = 'reference' WHERE service_id = ?",
    "fingerprint": "UPDATE credentials SET fingerprint = '00000000' WHERE service_id = ?",
    "updated_at": "UPDATE credentials SET updated_at = '2020-01-01T00:00:00.000000Z' WHERE service_id = ?",
    "version": "UPDATE credentials SET version = version + 7 WHERE service_id = ?",
    "version-type": "UPDATE credentials SET version = 'one' WHERE service_id = ?",
    "service_id": "UPDATE credentials SET service_id = 'svc_anthropic_001' WHERE service_id = ?",
}


@pytest.mark.parametrize("column", sorted(TAMPERS))
async def test_edited_metadata_column_is_detected(made_db: Path, tmp_path: Path, column: str) -> None:
    with closing(sqlite3.connect(made_db)) as raw, raw:
        assert raw.execute(TAMPERS[column], (OPENAI,)).rowcount == 1
    with start_sandbox(tmp_path, db_path=made_db) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": DEMO_API_KEY}) as c:
            listing = (await c.get("/v1/credentials")).json()
    tampered_id = "svc_anthropic_001" if column == "service_id" else OPENAI
    assert listing["tampered"] == [tampered_id]
    assert [entry["service_id"] for entry in listing["credentials"]] == [GITHUB]  # the intact row
    stderr = sandbox.stderr_text()
    assert "1 stored credential(s) failed verification" in stderr
    assert CANARY not in stderr and CANARY not in json.dumps(listing)
    with open_store(made_db) as store:
        assert store.integrity_failures == 1
        with pytest.raises(SandboxIntegrityError) as excinfo:
            store.reveal_for_tests(DEMO_API_KEY, tampered_id)
        assert CANARY not in str(excinfo.value)
        assert store.reveal_for_tests(DEMO_API_KEY, GITHUB) == "env://GITHUB_TOKEN"
        # Storing again replaces the tampered row with a genuine one.
        store.put_sync(DEMO_API_KEY, tampered_id, "bearer", CANARY)
        assert store.reveal_for_tests(DEMO_API_KEY, tampered_id) == CANARY


def test_owner_moved_to_another_account_is_detected(made_db: Path) -> None:
    other = "other-account-key-1f2e3d"
    with open_store(made_db) as store:
        other_owner = store.owner_id(other)
    with closing(sqlite3.connect(made_db)) as raw, raw:
        raw.execute("UPDATE credentials SET owner = ? WHERE service_id = ?", (other_owner, OPENAI))
    with open_store(made_db) as store:
        [row] = store.list_credentials_sync(other)
        assert not row.intact
        with pytest.raises(SandboxIntegrityError):
            store.reveal_for_tests(other, OPENAI)


def _downgrade_to_schema_1(db: Path, key: bytes) -> None:
    """Rewrite every row the way schema 1 stored it (associated data: owner, service, type, stored_as)."""
    aead = AESGCM(derive_subkey(key, b"encryption"))
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("DROP TABLE api_keys")
        raw.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
        rows = raw.execute("SELECT owner, service_id, credential_type, stored_as FROM credentials").fetchall()
        for owner, service_id, ctype, stored_as in rows:
            value = CANARY if service_id == OPENAI else "env://GITHUB_TOKEN"
            nonce = os.urandom(12)
            ct = aead.encrypt(nonce, value.encode(), credential_aad_v1(owner, service_id, ctype, stored_as))
            raw.execute(
                "UPDATE credentials SET nonce = ?, ciphertext = ? WHERE owner = ? AND service_id = ?",
                (nonce, ct, owner, service_id),
            )


def test_schema_1_rows_are_upgraded_then_fully_authenticated(made_db: Path) -> None:
    key = base64.b64decode(Path(f"{made_db}.key").read_text())
    _downgrade_to_schema_1(made_db, key)
    with closing(sqlite3.connect(made_db)) as raw, raw:
        # An edit made while the row was still schema 1 (not covered then) survives the upgrade as-is...
        raw.execute("UPDATE credentials SET version = 41 WHERE service_id = ?", (GITHUB,))
    with open_store(made_db) as store:
        assert store.integrity_failures == 0
        assert store.reveal_for_tests(DEMO_API_KEY, OPENAI) == CANARY
        assert [(row.service_id, row.version) for row in store.list_credentials_sync(DEMO_API_KEY)] == [
            (GITHUB, 41),
            (OPENAI, 1),
        ]
    with closing(sqlite3.connect(made_db)) as raw, raw:
        assert raw.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == ("2",)
        # ...but from now on every column is bound: the same edit is caught.
        raw.execute("UPDATE credentials SET updated_at = 'x' WHERE service_id = ?", (OPENAI,))
    with open_store(made_db) as store:
        assert store.integrity_failures == 1
        with pytest.raises(SandboxIntegrityError):
            store.reveal_for_tests(DEMO_API_KEY, OPENAI)


def test_forced_downgrade_marker_does_not_launder_edited_rows(made_db: Path) -> None:
    """Setting schema_version back to 1 makes the upgrade look at every row again: genuine schema-2 rows
    are kept as they are, and an edited one verifies under neither rule, so it is not re-encrypted."""
    with closing(sqlite3.connect(made_db)) as raw, raw:
        raw.execute("UPDATE credentials SET stored_as = 'reference' WHERE service_id = ?", (OPENAI,))
        raw.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    with open_store(made_db) as store:
        assert store.integrity_failures == 1
        with pytest.raises(SandboxIntegrityError):
            store.reveal_for_tests(DEMO_API_KEY, OPENAI)
        assert store.reveal_for_tests(DEMO_API_KEY, GITHUB) == "env://GITHUB_TOKEN"


@pytest.mark.parametrize("column", ["account", "name", "prefix", "created_at", "id"])
def test_edited_api_key_row_is_not_accepted(made_db: Path, column: str) -> None:
    with open_store(made_db) as store:
        owner = store.owner_id(DEMO_API_KEY)
        issued, info = store.issue_api_key_sync(owner, "laptop")
        assert store.account_for_key_sync(issued) == owner
        assert [key.id for key in store.list_api_keys_sync(owner)] == [info.id]
    with closing(sqlite3.connect(made_db)) as raw, raw:
        raw.execute(f"UPDATE api_keys SET {column} = {column} || 'x'")  # noqa: S608 - fixed column names
    with open_store(made_db) as store:
        assert store.account_for_key_sync(issued) is None
        assert store.list_api_keys_sync(owner) == []
        assert store.list_api_keys_sync(owner + "x") == []
