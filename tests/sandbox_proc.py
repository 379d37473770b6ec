"""Run the sandbox as a real subprocess for tests (a helper module, not a test module).

Works with or without an installed package: the child's ``PYTHONPATH`` starts with this repo's ``src``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx2

SRC_DIR = Path(__file__).resolve().parent.parent / "src"
LISTENING = re.compile(r"listening on (http://\S+)")
DEMO_KEY = "sandbox-demo-key"


def sandbox_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The child's environment: ours, plus ``env`` (a None value removes a variable), src on PYTHONPATH."""
    # Only what the test asks for: no DANUBE_SANDBOX_* setting leaks in from the developer's shell.
    merged = {name: value for name, value in os.environ.items() if not name.startswith("DANUBE_SANDBOX_")}
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    paths = [str(SRC_DIR), *filter(None, merged.get("PYTHONPATH", "").split(os.pathsep))]
    merged["PYTHONPATH"] = os.pathsep.join(paths)
    return merged


def sandbox_command(
    db_path: Path | str, *, api_keys: Sequence[str] = (), extra_args: Sequence[str] = ()
) -> list[str]:
    command = [sys.executable, "-m", "danube_mcp.sandbox", "--host", "127.0.0.1", "--port", "0"]
    command += ["--db", str(db_path)]
    for key in api_keys:
        command += ["--api-key", key]
    return [*command, *extra_args]


class _StderrPump(threading.Thread):
    """Copies the child's stderr into a file and wakes waiters when the listening line (or EOF) arrives."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._path = path
        self.changed = threading.Condition()
        self.url: str | None = None
        self.eof = False

    def run(self) -> None:
        with self._path.open("wb") as sink:
            for line in iter(self._stream.readline, b""):
                sink.write(line)
                sink.flush()
                found = LISTENING.search(line.decode("utf-8", "replace"))
                if found and self.url is None:
                    with self.changed:
                        self.url = found.group(1)
                        self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()


class SandboxProcess:
    def __init__(
        self, proc: subprocess.Popen[bytes], db_path: Path, stderr_path: Path, stdout_path: Path
    ) -> None:
        self.proc = proc
        self.db_path = db_path
        self.stderr_path = stderr_path
        self.stdout_path = stdout_path
        self.url = ""
        self._pump = _StderrPump(_require(proc.stderr), stderr_path)
        self._pump.start()

    def wait_listening(self, timeout: float) -> str:
        with self._pump.changed:
            self._pump.changed.wait_for(lambda: self._pump.url is not None or self._pump.eof, timeout)
            url = self._pump.url
        if url is None:
            self.stop()
            raise RuntimeError(f"the sandbox did not start within {timeout}s; stderr:\n{self.stderr_text()}")
        self.url = url
        return url

    def stderr_text(self) -> str:
        return (
            self.stderr_path.read_text(encoding="utf-8", errors="replace")
            if self.stderr_path.exists()
            else ""
        )

    def stdout_bytes(self) -> bytes:
        return self.stdout_path.read_bytes()

    def stop(self, sig_timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``sig_timeout`` s, then SIGKILL. Returns the exit status. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(sig_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(sig_timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def _require(stream: IO[bytes] | None) -> IO[bytes]:
    assert stream is not None
    return stream


@contextmanager
def start_sandbox(
    tmp_path: Path,
    *,
    api_keys: Sequence[str] = (DEMO_KEY,),
    extra_args: Sequence[str] = (),
    env: Mapping[str, str | None] | None = None,
    db_path: Path | None = None,
    startup_timeout: float = 30.0,
    keys_via: str = "env",
) -> Iterator[SandboxProcess]:
    """Start ``python -m danube_mcp.sandbox --port 0 --db <tmp>/sb.db ...`` and wait until it listens.

    The API keys go in ``DANUBE_SANDBOX_API_KEYS`` (``keys_via="env"``) or as ``--api-key`` flags
    (``keys_via="argv"``, which makes the sandbox print a process-list warning)."""
    db = db_path if db_path is not None else tmp_path / "sb.db"
    env = dict(env or {})
    if keys_via == "env" and api_keys:
        env.setdefault("DANUBE_SANDBOX_API_KEYS", ",".join(api_keys))
        api_keys = ()
    fd, stderr_name = tempfile.mkstemp(dir=tmp_path, prefix="sandbox-", suffix=".stderr")
    os.close(fd)
    stdout_path = Path(stderr_name).with_suffix(".stdout")
    with stdout_path.open("wb") as stdout:
        proc = subprocess.Popen(
            sandbox_command(db, api_keys=api_keys, extra_args=extra_args),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=sandbox_env(env),
        )
    sandbox = SandboxProcess(proc, db, Path(stderr_name), stdout_path)
    try:
        sandbox.wait_listening(startup_timeout)
        yield sandbox
    finally:
        sandbox.stop()


async def sandbox_stats(url: str) -> dict[str, Any]:
    """``GET /v1/_stats`` of a running sandbox: ``{"store_requests": n, "stored": n}``."""
    async with httpx2.AsyncClient(base_url=url, timeout=10.0) as client:
        response = await client.get("/v1/_stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


def wait_for_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status if ``proc`` ends within ``timeout`` seconds, else None (no kill)."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None
