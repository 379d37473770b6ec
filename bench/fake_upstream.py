"""A fast fake Danube upstream: a minimal asyncio HTTP/1.1 keep-alive server on 127.0.0.1.

Endpoints:

* ``POST /v1/credentials/store`` -> 200 ``{"success": true, "service_id": ..., "service_name": "Service <id>",
  "credential_type": ...}`` after the configured delay; 401 without a ``danube-api-key`` header; 400 for a body
  that is not a JSON object.
* ``GET /_stats`` -> ``{"requests": n, "connections": n, "all_connections": n, "unauthenticated": n,
  "bad_requests": n, "delay_ms": d}``. ``connections`` counts distinct TCP connections accepted since the last reset
  that carried at least one store request (control traffic is excluded); ``all_connections`` counts every
  connection accepted since the last reset.
* ``POST /_reset`` zeroes the counters; ``POST /_control {"delay_ms": N}`` sets the delay.

Run as a script (``python bench/fake_upstream.py --port 0 --delay-ms 0``): prints
``fake-upstream: listening on http://127.0.0.1:PORT`` on stderr. Or import it and call :func:`start_in_thread`.
Only sequential requests per connection are supported (no pipelining), with ``Content-Length`` bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

STORE_PATH = b"/v1/credentials/store"
MAX_HEADER = 64 * 1024
MAX_BODY = 4 * 1024 * 1024


@dataclass
class UpstreamState:
    """Counters and settings shared by every connection of one fake upstream."""

    delay_ms: float = 0.0
    requests: int = 0
    connections: int = 0
    all_connections: int = 0
    unauthenticated: int = 0
    bad_requests: int = 0
    open_connections: set[HttpProtocol] = field(default_factory=set)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "all_connections": self.all_connections,
            "unauthenticated": self.unauthenticated,
            "bad_requests": self.bad_requests,
            "delay_ms": self.delay_ms,
        }

    def reset(self) -> None:
        self.requests = self.connections = self.all_connections = 0
        self.unauthenticated = self.bad_requests = 0
        # ``connections`` counts connections accepted since the last reset: ones already open are not new.
        for proto in self.open_connections:
            proto.counted = True


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: parses sequential HTTP/1.1 requests and answers them in order."""

    def __init__(self, state: UpstreamState) -> None:
        self.state = state
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.closing = False
        self.counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.state.all_connections += 1
        self.state.open_connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.open_connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while not self.busy and self.transport is not None and not self.closing:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER:
                    self._finish(_response(400, _error("bad_request", "headers too large"), False), False)
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self._finish(_response(400, _error("bad_request", "bad request line"), False), False)
                return
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0") or b"0")
            if length > MAX_BODY or b"transfer-encoding" in headers:
                self._finish(_response(400, _error("bad_request", "unsupported body"), False), False)
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            conn = headers.get(b"connection", b"").lower()
            keep_alive = conn != b"close" and (version == b"HTTP/1.1" or conn == b"keep-alive")
            self._handle(method, target.split(b"?", 1)[0], headers, body, keep_alive)

    def _handle(
        self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes, keep_alive: bool
    ) -> None:
        state = self.state
        if path == STORE_PATH:
            if method != b"POST":
                self._finish(_response(405, _error("method_not_allowed", "use POST"), keep_alive), keep_alive)
                return
            state.requests += 1
            if not self.counted:
                self.counted = True
                state.connections += 1
            if not headers.get(b"danube-api-key"):
                state.unauthenticated += 1
                resp = _response(401, _error("unauthorized", "missing danube-api-key"), keep_alive)
            else:
                try:
                    payload = json.loads(body)
                    service_id = str(payload["service_id"])
                    credential_type = str(payload["credential_type"])
                except (ValueError, KeyError, TypeError):
                    state.bad_requests += 1
                    resp = _response(400, _error("bad_request", "body must be a JSON object"), keep_alive)
                else:
                    out = {
                        "success": True,
                        "service_id": service_id,
                        "service_name": f"Service {service_id}",
                        "credential_type": credential_type,
                    }
                    resp = _response(200, json.dumps(out, separators=(",", ":")).encode(), keep_alive)
            if state.delay_ms > 0:
                self.busy = True
                asyncio.get_running_loop().call_later(state.delay_ms / 1000.0, self._finish, resp, keep_alive)
            else:
                self._finish(resp, keep_alive)
            return
        if path == b"/_stats" and method == b"GET":
            resp = _response(200, json.dumps(state.stats()).encode(), keep_alive)
        elif path == b"/_reset" and method == b"POST":
            state.reset()
            resp = _response(200, b'{"ok":true}', keep_alive)
        elif path == b"/_control" and method == b"POST":
            try:
                state.delay_ms = max(0.0, float(json.loads(body or b"{}").get("delay_ms", state.delay_ms)))
            except (ValueError, TypeError, AttributeError):
                resp = _response(400, _error("bad_request", 'expected {"delay_ms": N}'), keep_alive)
            else:
                resp = _response(200, json.dumps(state.stats()).encode(), keep_alive)
        else:
            resp = _response(404, _error("not_found", "no such path"), keep_alive)
        self._finish(resp, keep_alive)

    def _finish(self, resp: bytes, keep_alive: bool) -> None:
        self.busy = False
        if self.transport is None:
            return
        self.transport.write(resp)
        if not keep_alive:
            self.closing = True
            self.transport.close()
        elif self.buf:
            self._process()


async def serve(
    host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0.0
) -> tuple[asyncio.Server, UpstreamState]:
    """Start listening on the running loop; returns the server and its state."""
    state = UpstreamState(delay_ms=delay_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(state), host, port, backlog=1024)
    return server, state


def server_url(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


@dataclass
class ThreadedUpstream:
    """A fake upstream running on its own event loop in a daemon thread."""

    url: str
    state: UpstreamState
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    _server: asyncio.Server

    def stop(self) -> None:
        async def _close() -> None:
            self._server.close()
            for proto in list(self.state.open_connections):
                if proto.transport is not None:
                    proto.transport.close()
            await self._server.wait_closed()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(_close(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def start_in_thread(host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0.0) -> ThreadedUpstream:
    """Run a fake upstream in a background thread (for tests and quick checks; not for CPU measurements)."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def _run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["pair"] = loop.run_until_complete(serve(host, port, delay_ms))
        except BaseException as exc:  # reported to the caller below
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=_run, name="fake-upstream", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("fake upstream did not start within 10 s")
    if "error" in started:
        raise RuntimeError("fake upstream failed to start") from started["error"]
    server, state = started["pair"]
    return ThreadedUpstream(server_url(server), state, loop, thread, server)


async def _main_async(host: str, port: int, delay_ms: float) -> None:
    server, _ = await serve(host, port, delay_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake-upstream: listening on {server_url(server)}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before each store answer")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args.host, args.port, args.delay_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
