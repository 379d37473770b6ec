"""A scriptable stand-in for Danube on 127.0.0.1: records every request, answers as told.

A raw asyncio HTTP/1.1 server in a background thread, so a test can make it misbehave in ways a
framework would not allow: drip a body, close mid-response, never answer, send 10 MB.

Usage::

    with FakeUpstream() as up:
        up.script(Reply(status=503), Reply())       # next two requests; then the default
        ... point DANUBE_API_URL at up.url ...
        assert up.requests[0].headers["danube-api-key"] == "..."
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """How to answer one request. ``body`` may be bytes, a JSON-able object, or None (echo success)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    drip: float = 0.0  # seconds between body bytes
    close_before: bool = False  # close the connection without answering
    close_mid_body: bool = False  # send headers and half the body, then close
    hang: bool = False  # accept and never answer
    reason: str = ""
    echo_body: bool = False  # put the request body inside an error message
    barrier: int = 0  # hold the answer until this many requests are in flight together
    # Echo the request into the answer: every string inside ``echo_template`` (a JSON-able object)
    # has "{body}" replaced by the request body and "{key}" by its danube-api-key header; the
    # result is the body. ``reason_template`` does the same for the reason phrase.
    echo_template: Any = None
    reason_template: str = ""
    retry_after_date: float | None = None  # add "Retry-After: <HTTP date this many s from now>"
    reset_before: bool = False  # abort the connection with a TCP RST instead of answering
    no_length: bool = False  # no content-length: the body ends when the connection closes


def success_body(req: Recorded) -> dict[str, Any]:
    data = req.json()
    sid = data.get("service_id", "")
    return {
        "success": True,
        "service_id": sid,
        "service_name": f"Service {sid}",
        "credential_type": data.get("credential_type"),
    }


class FakeUpstream:
    def __init__(self, default: Callable[[Recorded], Reply] | None = None) -> None:
        self.requests: list[Recorded] = []
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._arrived: asyncio.Event | None = None
        self._script: deque[Reply] = deque()
        self._default = default or (lambda req: Reply())
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.port = 0

    # -- control ---------------------------------------------------------------------------------

    def __enter__(self) -> FakeUpstream:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def set_default(self, default: Callable[[Recorded], Reply]) -> None:
        self._default = default

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._script.clear()

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"upstream saw {len(self.requests)} requests, wanted {n}")
                self._cond.wait(left)

    # -- server ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                rec = Recorded(method, path, headers, body)
                with self._cond:
                    self.requests.append(rec)
                    reply = self._script.popleft() if self._script else None
                    self._cond.notify_all()
                if reply is None:
                    reply = self._default(rec)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if reply.barrier:
                        await self._wait_barrier(reply.barrier)
                    if not await self._answer(rec, reply, reader, writer):
                        return
                finally:
                    self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _wait_barrier(self, n: int) -> None:
        """Block until ``n`` requests are in flight at once: proof that callers do not serialise."""
        if self._arrived is None:
            self._arrived = asyncio.Event()
        if self.in_flight >= n:
            self._arrived.set()
        await self._arrived.wait()

    async def _answer(
        self, rec: Recorded, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if reply.hang:
            # Never answer; the request ends when the client gives up and closes the connection.
            # (Waiting on a fresh Event instead left a task that asyncio later reported destroyed.)
            while await reader.read(65536):
                pass
            return False
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.close_before:
            return False
        if reply.reset_before:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        payload: bytes
        if reply.echo_template is not None:
            payload = json.dumps(_fill(reply.echo_template, rec)).encode()
        elif reply.echo_body:
            payload = json.dumps(
                {
                    "error": {
                        "code": "bad",
                        "message": "could not store " + rec.body.decode("utf-8", "replace"),
                    }
                }
            ).encode()
        elif reply.body is None:
            payload = json.dumps(success_body(rec)).encode() if reply.status < 300 else b""
        elif isinstance(reply.body, bytes):
            payload = reply.body
        else:
            payload = json.dumps(reply.body).encode()
        headers = {"content-type": "application/json", "content-length": str(len(payload))}
        if reply.no_length:
            del headers["content-length"]
            headers["connection"] = "close"
        if reply.retry_after_date is not None:
            headers["retry-after"] = formatdate(time.time() + reply.retry_after_date, usegmt=True)
        headers.update(reply.headers)
        reason = _fill(reply.reason_template, rec) if reply.reason_template else reply.reason
        head = f"HTTP/1.1 {reply.status} {reason or 'X'}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        writer.write(head.encode("latin-1") + b"\r\n")
        if reply.close_mid_body:
            writer.write(payload[: len(payload) // 2])
            await writer.drain()
            return False
        if reply.drip:
            for i in range(len(payload)):
                writer.write(payload[i : i + 1])
                await writer.drain()
                await asyncio.sleep(reply.drip)
        else:
            writer.write(payload)
            await writer.drain()
        return not reply.no_length


def _fill(template: Any, rec: Recorded) -> Any:
    """``template`` with "{body}" and "{key}" replaced in every string it holds."""
    if isinstance(template, str):
        body = rec.body.decode("utf-8", "replace")
        return template.replace("{body}", body).replace("{key}", rec.headers.get("danube-api-key", ""))
    if isinstance(template, dict):
        return {k: _fill(v, rec) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, rec) for v in template]
    return template
