"""Helpers that run ``danube-mcp`` as a real child process."""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


# The fast start's snapshot cache (transports/fast_start.py) for every child of this test run: the
# first stdio start records it, every later one answers the handshake from it.
CACHE_DIR = tempfile.mkdtemp(prefix="danube-mcp-test-cache-")
atexit.register(shutil.rmtree, CACHE_DIR, True)


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child: importable from the checkout, nothing secret inherited."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(SRC),
        "PYTHONUNBUFFERED": "1",
        "DANUBE_MCP_CACHE_DIR": CACHE_DIR,
    }
    env.update(extra)
    return env


class Captured:
    """stderr of a child, in a real file (the SDK's stdio client needs a fileno)."""

    def __init__(self) -> None:
        self.file: IO[str] = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")

    def text(self) -> str:
        self.file.flush()
        self.file.seek(0)
        return self.file.read()


# The three ways an SDK 2.x client connects: discover then fall back, initialize only, 2026 only.
MODES = ("auto", "legacy", "2026-07-28")


@asynccontextmanager
async def mcp_stdio(
    env: dict[str, str], args: tuple[str, ...] = (), *, mode: str = "legacy", **client_kw: Any
) -> AsyncIterator[tuple[Client, Captured]]:
    """A connected SDK client with ``python -m danube_mcp`` over stdio."""
    err = Captured()
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "danube_mcp", *args], env=env, cwd=str(REPO)
    )
    async with Client(stdio_client(params, errlog=err.file), mode=mode, **client_kw) as client:
        yield client, err


@asynccontextmanager
async def mcp_http(
    url: str, *, mode: str = "legacy", headers: dict[str, str] | None = None, **client_kw: Any
) -> AsyncIterator[Client]:
    """A connected SDK client on streamable HTTP at ``url`` (…/mcp)."""
    async with httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30, read=60)) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, **client_kw) as client:
            yield client


@asynccontextmanager
async def mcp_sse(
    url: str, *, headers: dict[str, str] | None = None, **client_kw: Any
) -> AsyncIterator[Client]:
    """A connected SDK client on legacy SSE at ``url`` (…/sse); initialize era only."""
    async with Client(sse_client(url, headers=headers), mode="legacy", **client_kw) as client:
        yield client


class RawStdio:
    """``danube-mcp`` over stdio with raw bytes in and parsed lines out, for protocol tests."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.err = Captured()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "danube_mcp", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err.file,
            env=env,
            cwd=str(REPO),
        )
        self.raw_lines: list[bytes] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def send(self, data: bytes | dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        if isinstance(data, dict):
            data = json.dumps(data).encode() + b"\n"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, timeout: float = 15.0) -> dict[str, Any]:
        line = self._lines.get(timeout=timeout)
        if line is None:
            raise EOFError("server closed stdout")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def recv_id(self, rid: Any, timeout: float = 15.0) -> dict[str, Any]:
        """The answer to request ``rid``, skipping notifications."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.1, deadline - time.monotonic()))
            if msg.get("id") == rid and ("result" in msg or "error" in msg):
                return msg

    def initialize(self) -> dict[str, Any]:
        self.send(initialize_request("2025-06-18"))
        answer = self.recv_id(0)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def close(self) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@contextmanager
def raw_stdio(env: dict[str, str], args: tuple[str, ...] = ()) -> Iterator[RawStdio]:
    raw = RawStdio(env, args)
    try:
        yield raw
    finally:
        raw.close()
        if raw.proc.stdout:
            raw.proc.stdout.close()


LISTENING = re.compile(r"listening on (http://\S+)")


def wait_for_line(
    read_text: Any, pattern: re.Pattern[str], proc: subprocess.Popen[Any], timeout: float = 20
) -> str:
    """Poll a child's captured stderr until ``pattern`` matches; fail early if it exits."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        m = pattern.search(read_text())
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"child exited with {proc.returncode}: {read_text()[-2000:]}")
        time.sleep(delay)  # polling a file for a condition, with a deadline
        delay = min(delay * 2, 0.1)
    raise TimeoutError(f"no line matching {pattern.pattern!r}: {read_text()[-2000:]}")


class HttpServer:
    """``danube-mcp`` serving HTTP as a child process on an ephemeral port."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = (), *, wait: bool = True) -> None:
        """With ``wait=False`` the caller starts several and calls :meth:`wait` on each later."""
        self.err = Captured()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "danube_mcp", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err.file,
            env=env,
            cwd=str(REPO),
        )
        self.url = ""
        if wait:
            self.wait()

    def wait(self) -> None:
        """Until the server says where it listens."""
        self.url = wait_for_line(self.err.text, LISTENING, self.proc)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout)
        return code

    def stdout(self) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read() if self.proc.poll() is not None else b""


@contextmanager
def http_server(env: dict[str, str], args: tuple[str, ...] = ()) -> Iterator[HttpServer]:
    server = HttpServer(env, args)
    try:
        yield server
    finally:
        server.stop()
        if server.proc.stdout:
            server.proc.stdout.close()


MODERN = "2026-07-28"


def initialize_request(protocol: str = "2025-11-25", rid: int = 0) -> dict[str, Any]:
    """An initialize-era ``initialize`` request with no client capabilities."""
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {
            "protocolVersion": protocol,
            "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"},
        },
    }


def modern_meta(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """The per-request ``_meta`` envelope of a 2026-07-28 request."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": capabilities or {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "0"},
    }
