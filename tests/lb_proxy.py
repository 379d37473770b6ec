"""A small load balancer for tests and benchmarks: a TCP proxy on 127.0.0.1 that sends each
connection to one of several backends, round-robin, and records where each request went.

It reads the request head (HTTP/1.1) only to classify the request, so a test can pin where each
kind of request goes: ``call`` (``POST /mcp`` with ``mcp-method: tools/call``), ``mcp`` (any
other ``/mcp`` request), ``page-get`` and ``page-post`` (``/secure-input/...``), ``other``.
``plan`` maps a kind to the backends it cycles through; kinds without a plan share one
round-robin over every backend that is not marked down. Clients must not reuse connections (one
request per connection) for the routing to be per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any


def classify(head: bytes) -> str:
    first, _, rest = head.partition(b"\r\n")
    parts = first.split(b" ")
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")
    if path.startswith(b"/secure-input/"):
        return "page-get" if method == b"GET" else "page-post"
    if path.startswith(b"/mcp"):
        for line in rest.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"mcp-method" and value.strip() == b"tools/call":
                return "call"
        return "mcp"
    return "other"


class RoutingProxy:
    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self.plan: dict[str, list[int]] = {}
        self.down: set[int] = set()
        self.log: list[tuple[str, int]] = []
        self._turns: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RoutingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def kinds(self, kind: str) -> list[int]:
        """The backends that served requests of ``kind``, in order."""
        return [index for k, index in list(self.log) if k == kind]

    def _route(self, kind: str) -> int:
        order = self.plan.get(kind)
        key = kind if order else "*"
        candidates = [i for i in (order or range(len(self.backends))) if i not in self.down]
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + 1
        return candidates[turn % len(candidates)]

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Cancelled only when the proxy stops; ending quietly keeps asyncio from logging it.
        with contextlib.suppress(asyncio.CancelledError):
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        kind = classify(head)
        index = self._route(kind)
        self.log.append((kind, index))
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
        except OSError:
            writer.close()
            return
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
