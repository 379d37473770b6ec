"""Load: 10,000 ``store_credential`` calls over streamable HTTP from 32 concurrent MCP clients, against a
real ``danube-sandbox`` process (SQLite + AES-GCM), through a real ``danube-mcp`` process. Half the clients
hold initialize-era sessions, half send 2026-07-28 requests (per-request ``_meta``, no session): both eras
on one server at once, as after a host upgrade.

Asserts zero errors, that the sandbox counted exactly one store per call, and that the server's resident
memory does not grow beyond noise once warm. Prints calls/s and RSS figures (visible with ``-s``) and writes
them to ``bench/results/load.json``.

Run it on its own with ``pytest -m load tests/test_load.py -s``.

The client is a lean raw HTTP/1.1 one (one keep-alive connection per client; a session client sends
``initialize`` + ``notifications/initialized``, then ``tools/call`` with the ``mcp-session-id`` header; a
2026 client sends ``server/discover``, then ``tools/call`` with ``_meta`` and the MCP-Protocol-Version,
Mcp-Method and Mcp-Name headers; answers read from the SSE ``data:`` line or a JSON body): the SDK
client costs more CPU per call than the server does, and on a 2-core machine it would measure itself.
The SDK client is exercised by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import pytest
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from procs import MODERN, REPO, child_env, http_server, modern_meta
from sandbox_proc import sandbox_stats, start_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.load]

API_KEY: Final = "load-key"
SESSIONS: Final = 32
# Half the clients hold initialize-era sessions, half send 2026-07-28 requests (per-request _meta,
# no session), all at once against the same server: the calls are shared out among all 32.
MODERN_CLIENTS: Final = SESSIONS // 2
CALLS: Final = 10_000
WARMUP_CALLS: Final = 1_000
TIME_LIMIT: Final = 600.0  # seconds for the whole run: CI must never hang on this test
# The server is a leak detector's subject here, not a benchmark's: after warm-up, a leak of even 2 KiB per
# call would add ~18 MiB over the remaining 9,000 calls, while allocator and GC noise for a warm CPython
# process stays within a few MiB. 20 MiB separates the two without flaking on a busy CI machine.
RSS_GROWTH_LIMIT_MIB: Final = 20.0
RESULTS: Final = REPO / "bench" / "results" / "load.json"
# Services of the sandbox's built-in catalog that accept a stored credential.
SERVICES: Final = (
    "svc_openai_001",
    "svc_anthropic_001",
    "svc_github_001",
    "svc_stripe_001",
    "3f0c1a52-8d4e-4b8e-9a4c-2d5b7e1f6a90",
    "9b2e7d4c-1a3f-4c6e-8b5d-0e7f2a9c3d18",
)


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RawSession:
    """One MCP client over streamable HTTP on its own keep-alive HTTP/1.1 connection: an
    initialize-era session (``legacy``), or a 2026-07-28 client whose requests stand alone."""

    def __init__(self, host: str, port: int, era: str = "legacy") -> None:
        self.host, self.port = host, port
        self.era = era
        self.session_id: str | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.next_id = 0

    async def _request(
        self, method: str, body: bytes = b"", extra: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"{method} /mcp HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
            f"content-length: {len(body)}\r\n"
        )
        if self.session_id is not None:
            head += (
                f"mcp-session-id: {self.session_id}\r\nmcp-protocol-version: {LATEST_HANDSHAKE_VERSION}\r\n"
            )
        self.writer.write((head + extra).encode("latin-1") + b"\r\n" + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int((await self.reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            data = b"".join(parts)
        else:
            data = b""
        if headers.get("connection", "").lower() == "close":
            await self.close_connection()
        return status, headers, data

    async def rpc(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """POST one JSON-RPC message; the answer to it (for a request), None for a notification."""
        extra = ""
        if self.era == MODERN:
            message = {**message, "params": {**message.get("params", {}), "_meta": modern_meta()}}
            extra = f"mcp-protocol-version: {MODERN}\r\nmcp-method: {message['method']}\r\n"
            if "name" in message["params"]:
                extra += f"mcp-name: {message['params']['name']}\r\n"
        status, headers, data = await self._request("POST", json.dumps(message).encode(), extra)
        if self.era == MODERN and "mcp-session-id" in headers:
            raise RuntimeError("a 2026-07-28 request was given a session")
        self.session_id = headers.get("mcp-session-id", self.session_id)
        if "id" not in message:
            if status not in (200, 202):
                raise RuntimeError(f"notification answered HTTP {status}")
            return None
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        if headers.get("content-type", "").startswith("application/json"):
            answer: dict[str, Any] = json.loads(data)
            return answer
        for event in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            payload = b"\n".join(
                line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if payload.strip():
                parsed: dict[str, Any] = json.loads(payload)
                if parsed.get("id") == message["id"]:
                    return parsed
        raise RuntimeError(f"no answer to request {message['id']} in the SSE body")

    async def open(self) -> None:
        if self.era == MODERN:  # no session: discover the server, as a 2026 client does first
            found = await self.rpc({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {}})
            if found is None or MODERN not in found.get("result", {}).get("supportedVersions", []):
                raise RuntimeError(f"server/discover failed: {found}")
            return
        answer = await self.rpc(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": LATEST_HANDSHAKE_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "load-test", "version": "0"},
                },
            }
        )
        if answer is None or "result" not in answer or self.session_id is None:
            raise RuntimeError(f"initialize failed: {answer}")
        await self.rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def call(self, service_id: str, value: str) -> dict[str, Any] | None:
        self.next_id += 1
        return await self.rpc(
            {
                "jsonrpc": "2.0",
                "id": self.next_id,
                "method": "tools/call",
                "params": {
                    "name": "store_credential",
                    "arguments": {
                        "service_id": service_id,
                        "credential_type": "api_key",
                        "credential_value": value,
                    },
                },
            }
        )

    async def close_connection(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def close(self) -> None:
        """End the session (DELETE) and close the connection."""
        try:
            if self.session_id is not None and self.writer is not None:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                    await self._request("DELETE")
        finally:
            await self.close_connection()


@dataclass
class Tally:
    """Shared by the workers: hands out call numbers and records what came back."""

    limit: int
    issued: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def take(self) -> int | None:
        if self.issued >= self.limit:
            return None
        self.issued += 1
        return self.issued


async def worker(index: int, session: RawSession, tally: Tally) -> None:
    while (n := tally.take()) is not None:
        service = SERVICES[n % len(SERVICES)]
        started = time.perf_counter()
        try:
            answer = await session.call(service, f"sk-load-{index:02d}-{n:06d}")
        except (OSError, RuntimeError, ValueError, asyncio.IncompleteReadError) as exc:
            tally.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            await session.close_connection()  # the next call gets a fresh connection
            continue
        result = (answer or {}).get("result")
        if not isinstance(result, dict) or result.get("isError") is not False:
            tally.errors.append(f"bad answer: {json.dumps(answer)[:200]}")
            continue
        structured = result.get("structuredContent") or {}
        if structured.get("success") is not True or structured.get("service_id") != service:
            tally.errors.append(f"unexpected result: {json.dumps(result)[:200]}")
            continue
        if ("resultType" in result) is not (session.era == MODERN):  # each era's result shape
            tally.errors.append(f"wrong era ({session.era}): {json.dumps(result)[:200]}")
            continue
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - started)


async def run_calls(sessions: list[RawSession], calls: int) -> Tally:
    tally = Tally(limit=calls)
    async with anyio.create_task_group() as tg:
        for i, session in enumerate(sessions):
            tg.start_soon(worker, i, session, tally)
    return tally


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else float("nan")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """A real sandbox (file database in tmp_path) and ``danube-mcp --transport streamable-http`` on it."""
    with start_sandbox(
        tmp_path, api_keys=(API_KEY,), extra_args=("--log-level", "warning"), db_path=tmp_path / "load.db"
    ) as sandbox:
        env = child_env(DANUBE_API_URL=sandbox.url, DANUBE_API_KEY=API_KEY)
        with http_server(env, ("--transport", "streamable-http")) as server:
            yield sandbox, server


async def test_ten_thousand_calls_from_32_sessions(stack: tuple[Any, Any]) -> None:
    sandbox, server = stack
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    pid = server.proc.pid
    rss_idle = rss_mib(pid)
    with anyio.fail_after(TIME_LIMIT):
        before = await sandbox_stats(sandbox.url)
        sessions = [
            RawSession(host, int(port), MODERN if i < MODERN_CLIENTS else "legacy") for i in range(SESSIONS)
        ]
        try:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for session in sessions:
                        tg.start_soon(session.open)
            t0 = time.perf_counter()
            warm = await run_calls(sessions, WARMUP_CALLS)
            t_warm = time.perf_counter()
            rss_warm = rss_mib(pid)
            measured = await run_calls(sessions, CALLS - WARMUP_CALLS)
            t_end = time.perf_counter()
            rss_end = rss_mib(pid)
        finally:
            with anyio.move_on_after(30, shield=True):
                async with anyio.create_task_group() as tg:
                    for session in sessions:
                        tg.start_soon(session.close)
        after = await sandbox_stats(sandbox.url)

    errors = warm.errors + measured.errors
    calls_done = warm.ok + measured.ok + len(errors)
    figures = {
        "sessions": SESSIONS,
        "of_which_2026_clients": MODERN_CLIENTS,
        "calls": calls_done,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "warmup_calls": WARMUP_CALLS,
        "calls_per_s_overall": round(CALLS / (t_end - t0), 1),
        "calls_per_s_after_warmup": round((CALLS - WARMUP_CALLS) / (t_end - t_warm), 1),
        "elapsed_s": round(t_end - t0, 2),
        "p50_ms_after_warmup": round(percentile(measured.latencies, 50) * 1000, 1),
        "p99_ms_after_warmup": round(percentile(measured.latencies, 99) * 1000, 1),
        "server_rss_idle_mib": round(rss_idle, 1),
        "server_rss_after_warmup_mib": round(rss_warm, 1),
        "server_rss_end_mib": round(rss_end, 1),
        "server_rss_growth_mib": round(rss_end - rss_warm, 2),
        "rss_growth_limit_mib": RSS_GROWTH_LIMIT_MIB,
        "sandbox_store_requests": after["store_requests"] - before["store_requests"],
        "sandbox_stored": after["stored"] - before["stored"],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print("\nload test:", json.dumps(figures, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")

    assert errors == [], errors[:5]
    assert warm.ok + measured.ok == CALLS
    assert figures["sandbox_store_requests"] == CALLS
    assert figures["sandbox_stored"] == CALLS
    assert rss_end - rss_warm < RSS_GROWTH_LIMIT_MIB, figures
    assert server.proc.poll() is None
    assert "Traceback" not in server.err.text()
    assert "Traceback" not in sandbox.stderr_text()
