"""A raw, cheap HTTP/1.1 load generator for the HTTP comparisons (asyncio ``Protocol``, keep-alive).

Each connection sends one pre-encoded request over and over and parses only what it must: the status
line, ``Content-Length`` or chunked framing. A call counts as ok when the answer is 200 and carries a
tool result with ``"isError":false`` (or, for the floor, the upstream's ``"success":true``). The client
costs a few tens of µs per call, so it is not what limits the servers measured here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from _common import API_KEY, SECRET, Json

MODERN_VERSION = "2026-07-28"
LEGACY_VERSION = "2025-11-25"
ARGS: Json = {"service_id": "svc_bench_001", "credential_type": "bearer", "credential_value": SECRET}
MODERN_META: Json = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
}
OK_MARKERS = (b'"isError":false', b'"isError": false')


def _dumps(msg: Json) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def http_request(host: str, port: int, path: str, headers: Sequence[tuple[str, str]], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("latin-1") + b"\r\n" + body


def modern_call(host: str, port: int, path: str, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """A 2026-07-28 ``tools/call``: per-request ``_meta`` and the routing headers, no session."""
    body = _dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "store_credential", "arguments": ARGS, "_meta": MODERN_META},
        }
    )
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", MODERN_VERSION),
        ("mcp-method", "tools/call"),
        ("mcp-name", "store_credential"),
        *extra,
    ]
    return http_request(host, port, path, headers, body)


def legacy_headers(session_id: str | None, extra: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    h = [("content-type", "application/json"), ("accept", "application/json, text/event-stream")]
    if session_id:
        h += [("mcp-session-id", session_id), ("mcp-protocol-version", LEGACY_VERSION)]
    return [*h, *extra]


def legacy_call_body(rid: int = 2) -> bytes:
    return _dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": "store_credential", "arguments": ARGS},
        }
    )


def upstream_post(host: str, port: int) -> bytes:
    """The floor: the same store request the servers forward, posted straight to the fake upstream."""
    body = _dumps({k: ARGS[k] for k in ("service_id", "credential_type", "credential_value")})
    headers = [("content-type", "application/json"), ("danube-api-key", API_KEY)]
    return http_request(host, port, "/v1/credentials/store", headers, body)


class Response:
    __slots__ = ("body", "head", "status")

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status, self.head, self.body = status, head, body

    def header(self, name: bytes) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == name:
                return v.strip().decode("latin-1")
        return None


class Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Conn:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            resp = self._parse()
            if resp is not None:
                waiter.set_result(resp)

    def _parse(self) -> Response | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end])
        lower = head.lower()
        start = end + 4
        i = lower.find(b"\r\ncontent-length:")
        if i >= 0:
            j = lower.find(b"\r\n", i + 2)
            n = int(lower[i + 17 : j if j >= 0 else None])
            if len(buf) < start + n:
                return None
            body = bytes(buf[start : start + n])
            del buf[: start + n]
        elif b"\r\ntransfer-encoding: chunked" in lower:
            parts = []
            pos = start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
                if size == 0:
                    if len(buf) < eol + 4:
                        return None
                    del buf[: eol + 4]
                    break
                if len(buf) < eol + 2 + size + 2:
                    return None
                parts.append(bytes(buf[eol + 2 : eol + 2 + size]))
                pos = eol + 2 + size + 2
            body = b"".join(parts)
        else:
            status = int(head[9:12])
            if status in (202, 204, 304):
                del buf[:start]
                return Response(status, head, b"")
            return None  # body until close: not used by any server here
        return Response(int(head[9:12]), head, body)

    async def request(self, data: bytes) -> Response:
        if self.closed or self.transport is None:
            raise ConnectionError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def call_ok(resp: Response) -> bool:
    return resp.status == 200 and any(m in resp.body for m in OK_MARKERS)


def floor_ok(resp: Response) -> bool:
    return resp.status == 200 and (b'"success": true' in resp.body or b'"success":true' in resp.body)


@dataclass
class Client:
    """What one simulated client sends: fixed request bytes on its own connection."""

    host: str
    port: int
    request: bytes
    ok: object = call_ok
    conn: Conn | None = None

    async def connect(self) -> None:
        self.conn = await Conn.open(self.host, self.port)

    async def call(self) -> bool:
        if self.conn is None or self.conn.closed:
            await self.connect()
        assert self.conn is not None
        resp = await self.conn.request(self.request)
        return bool(self.ok(resp))  # type: ignore[operator]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


async def open_legacy_session(
    host: str, port: int, path: str, extra: Sequence[tuple[str, str]] = ()
) -> Client:
    """initialize + notifications/initialized on a fresh connection; the client then calls in that session."""
    conn = await Conn.open(host, port)
    init = _dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "0"},
            },
        }
    )
    resp = await conn.request(http_request(host, port, path, legacy_headers(None, extra), init))
    if resp.status != 200:
        raise RuntimeError(f"initialize answered {resp.status}: {resp.body[:200]!r}")
    sid = resp.header(b"mcp-session-id")
    note = _dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    resp = await conn.request(http_request(host, port, path, legacy_headers(sid, extra), note))
    if resp.status not in (200, 202):
        raise RuntimeError(f"notifications/initialized answered {resp.status}")
    return Client(
        host, port, http_request(host, port, path, legacy_headers(sid, extra), legacy_call_body()), conn=conn
    )


async def close_legacy_session(client: Client, path: str, extra: Sequence[tuple[str, str]] = ()) -> None:
    """DELETE the session (when it has one), then close the connection."""
    sid = None
    for line in client.request.split(b"\r\n"):
        if line.lower().startswith(b"mcp-session-id:"):
            sid = line.split(b":", 1)[1].strip().decode()
    try:
        if sid and client.conn is not None and not client.conn.closed:
            head = f"DELETE {path} HTTP/1.1\r\nhost: {client.host}:{client.port}\r\ncontent-length: 0\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in legacy_headers(sid, extra)) + "\r\n"
            await asyncio.wait_for(client.conn.request(head.encode("latin-1")), 5)
    except (ConnectionError, TimeoutError, ValueError):
        pass
    finally:
        client.close()


@dataclass
class LoadResult:
    calls: int = 0
    errors: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


async def drive(clients: Sequence[Client], duration: float) -> LoadResult:
    """Every client calls flat out, one request at a time, for ``duration`` seconds."""
    out = LoadResult()
    pc = time.perf_counter
    deadline = pc() + duration

    async def worker(c: Client) -> None:
        lat = out.latencies
        while True:
            t0 = pc()
            if t0 >= deadline:
                return
            try:
                ok = await c.call()
            except (ConnectionError, OSError, ValueError) as exc:
                out.errors += 1
                if len(out.error_samples) < 3:
                    out.error_samples.append(f"{type(exc).__name__}: {exc}"[:200])
                c.close()
                c.conn = None
                continue
            if ok:
                lat.append(pc() - t0)
            else:
                out.errors += 1
                if len(out.error_samples) < 3:
                    out.error_samples.append("not an ok tool result")

    t0 = pc()
    await asyncio.gather(*(worker(c) for c in clients))
    out.elapsed = pc() - t0
    out.calls = len(out.latencies)
    return out


async def drive_count(clients: Sequence[Client], total: int) -> LoadResult:
    """``total`` calls spread over the clients (each one at a time)."""
    out = LoadResult()
    left = total

    async def worker(c: Client) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                ok = await c.call()
            except (ConnectionError, OSError, ValueError):
                ok = False
                c.close()
                c.conn = None
            out.calls += ok
            out.errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    out.elapsed = time.perf_counter() - t0
    return out
