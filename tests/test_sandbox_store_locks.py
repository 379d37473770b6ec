"""An open sandbox store keeps the SQLite locks that tell other processes it is there.

SQLite uses POSIX record locks, which a process loses on a file as soon as it closes *any* descriptor of
that file. In WAL mode a connection holds a shared lock on the database file for as long as it is open;
if that lock is lost, another process that closes its connection believes it is the last one, checkpoints
and deletes the ``-wal`` and ``-shm`` files, and every later commit of the store goes to a deleted file:
acknowledged stores vanish after a crash. These tests use a second real process, as the sandbox and a
reader (the test suite, a backup tool, ``sqlite3``) would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from danube_mcp.sandbox import open_store

API_KEY = "lock-test-key"
SERVICE = "svc_openai_001"

_READ_COUNT = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM credentials").fetchone()[0])
db.close()
"""


def other_process_count(db_path: Path) -> int:
    """Open, read and close the database in another process; return how many credentials it saw."""
    done = subprocess.run(
        [sys.executable, "-c", _READ_COUNT, str(db_path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_another_process_closing_does_not_take_the_wal_from_an_open_store(tmp_path: Path) -> None:
    db_path = tmp_path / "locks.db"
    with open_store(db_path) as store:
        store.put_sync(API_KEY, SERVICE, "api_key", "first")
        assert other_process_count(db_path) == 1
        # The other process was not the last connection: the store's WAL is still in place...
        assert os.path.exists(f"{db_path}-wal")
        store.put_sync(API_KEY, "svc_github_001", "api_key", "second")
        # ...so a commit made after it closed is seen by everyone, not written to a deleted file.
        assert other_process_count(db_path) == 2


_REVEAL = """
import sys
from danube_mcp.sandbox import open_store
with open_store(sys.argv[1]) as other:
    print(other.reveal_for_tests(sys.argv[2], sys.argv[3]))
"""


def other_process_reveal(db_path: Path) -> str:
    """Open the database with ``open_store`` in another process (as the tests and a second sandbox do),
    read the credential and close it; return what it read."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _REVEAL, str(db_path), API_KEY, SERVICE],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_store_opened_and_closed_beside_an_open_store_leaves_it_its_wal(tmp_path: Path) -> None:
    db_path = tmp_path / "locks.db"
    with open_store(db_path) as store:
        store.put_sync(API_KEY, SERVICE, "api_key", "v1")
        assert other_process_reveal(db_path) == "v1"
        assert os.path.exists(f"{db_path}-wal")
        store.put_sync(API_KEY, SERVICE, "api_key", "v2")
        # Committed (and so acknowledged) while the first store is still open: others see it now.
        assert other_process_reveal(db_path) == "v2"
    with open_store(db_path) as reopened:
        assert reopened.reveal_for_tests(API_KEY, SERVICE) == "v2"
