"""Cancellation, shutdown and crash safety, with real processes.

* Cancellation: a client cancels an in-flight call (``notifications/cancelled`` over stdio and over
  streamable HTTP; a dropped connection over HTTP): the server abandons the upstream request (the
  upstream sees its peer close the connection), leaks nothing, and answers the next call.
* Shutdown: SIGTERM with calls in flight over HTTP (they finish, or fail cleanly, inside uvicorn's 3 s
  grace period and the process exits 0); stdin closed, or SIGTERM, with a call in flight over stdio.
* Crash safety of the sandbox: SIGKILL while 32 writers store; after a restart the database opens and
  every store acknowledged with 200 is present and decrypts.

The upstream here is :class:`WatchUpstream`, not ``tests/upstream.FakeUpstream``: a hung request must
notice when the server gives up on it, which only shows as the peer closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
from mcp import Client
from mcp_types.version import LATEST_HANDSHAKE_VERSION

from danube_mcp.sandbox.store import open_store
from danube_mcp.transports.stdio import EOF_GRACE
from procs import (
    MODERN,
    HttpServer,
    RawStdio,
    child_env,
    http_server,
    mcp_http,
    mcp_stdio,
    modern_meta,
    raw_stdio,
)
from sandbox_proc import sandbox_stats, start_sandbox

pytestmark = pytest.mark.anyio

API_KEY: Final = "dk-CANARY-resilience-key-0123456789"
SECRET: Final = "sk-CANARY-resilience-value-987654321"
CANARIES: Final = (API_KEY, SECRET)
ARGS: Final = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET}
ACCEPT: Final = "application/json, text/event-stream"
PROTOCOL: Final = LATEST_HANDSHAKE_VERSION  # of raw initialize-era sessions
# The two ways a client speaks: an initialize-era session, or 2026-07-28 requests (per-request _meta).
ERAS: Final = ("legacy", MODERN)
GRACE: Final = 3.0  # uvicorn's timeout_graceful_shutdown in danube_mcp.transports.http.serve_http
SLACK: Final = 4.0  # process start-up of the shutdown path, interpreter teardown, a loaded CI machine


# ------------------------------------------------------------------------------------------------
# An upstream that notices abandoned requests


@dataclass
class WatchUpstream:
    """A Danube stand-in on 127.0.0.1 that answers each store after ``delay`` seconds, or never when
    ``hang`` is set; a hung request waits for the peer to close the connection and counts that as
    ``abandoned``. Runs its own event loop in a thread."""

    hang: bool = False
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    abandoned: int = 0
    answered: int = 0
    in_flight: int = 0
    open_connections: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

        async def listen() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _update(self, **deltas: int) -> None:
        with self._cond:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[WatchUpstream], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"upstream: {what} not reached in {timeout}s (requests={len(self.requests)}, "
                        f"in_flight={self.in_flight}, abandoned={self.abandoned}, answered={self.answered}, "
                        f"open_connections={self.open_connections})"
                    )
                self._cond.wait(left)

    async def until(self, predicate: Callable[[WatchUpstream], bool], timeout: float, what: str) -> None:
        await anyio.to_thread.run_sync(functools.partial(self.wait_for, predicate, timeout, what))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._update(open_connections=1)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # close() cancels the handlers that are still running; asyncio would log it
        finally:
            writer.close()
            self._update(open_connections=-1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length))
                with self._cond:
                    self.requests.append(body)
                    self.in_flight += 1
                    hang, delay = self.hang, self.delay
                    self._cond.notify_all()
                try:
                    if hang:
                        # Nothing will ever be sent: the request ends only when the peer gives up.
                        await reader.read(1)
                        self._update(abandoned=1)
                        return
                    await asyncio.sleep(delay)
                    payload = json.dumps(
                        {
                            "success": True,
                            "service_id": body.get("service_id"),
                            "service_name": "Watched",
                            "credential_type": body.get("credential_type"),
                        }
                    ).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    await writer.drain()
                    self._update(answered=1)
                finally:
                    self._update(in_flight=-1)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass


@contextmanager
def watch_upstream(*, hang: bool = False, delay: float = 0.0) -> Iterator[WatchUpstream]:
    up = WatchUpstream(hang=hang, delay=delay)
    up.start()
    try:
        yield up
    finally:
        up.close()


def env_for(up: WatchUpstream, **extra: str) -> dict[str, str]:
    return child_env(DANUBE_API_KEY=API_KEY, DANUBE_API_URL=up.url, DANUBE_MCP_LOG_LEVEL="DEBUG", **extra)


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    for canary in CANARIES:
        assert canary not in stderr


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def call_msg(rid: int | str, args: dict[str, Any] | None = None, era: str = "legacy") -> dict[str, Any]:
    """A raw ``tools/call``; in the 2026 era it carries the per-request ``_meta`` envelope."""
    params: dict[str, Any] = {"name": "store_credential", "arguments": args or ARGS}
    if era == MODERN:
        params["_meta"] = modern_meta()
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def cancel_msg(rid: int | str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": rid, "reason": "test"},
    }


# ------------------------------------------------------------------------------------------------
# A raw streamable-HTTP client (httpx2), so a test controls exactly when a connection goes away


class HttpStatus(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status


class RawHttpSession:
    """Raw streamable HTTP in one era: an initialize-era session (``legacy``), or 2026-07-28
    requests, each standing alone with its ``_meta`` envelope and routing headers."""

    def __init__(self, hc: httpx2.AsyncClient, url: str, era: str = "legacy") -> None:
        self.hc = hc
        self.url = f"{url}/mcp"
        self.era = era
        self.headers = {"accept": ACCEPT}

    async def open(self) -> None:
        if self.era == MODERN:
            return  # nothing to open: every 2026 request stands alone
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "resilience", "version": "0"},
            },
        }
        assert await self.request(init) is not None
        note = await self.hc.post(
            self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers
        )
        assert note.status_code == 202

    def _headers_for(self, message: dict[str, Any]) -> dict[str, str]:
        if self.era != MODERN:
            return self.headers
        headers = {**self.headers, "mcp-protocol-version": MODERN, "mcp-method": message["method"]}
        name = message.get("params", {}).get("name")
        if name is not None:
            headers["mcp-name"] = name
        return headers

    async def request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """POST a request and read its SSE (or JSON) answer; None if the stream ended without one."""
        headers = self._headers_for(message)
        async with self.hc.stream("POST", self.url, json=message, headers=headers) as resp:
            if resp.status_code != 200:
                raise HttpStatus(resp.status_code, (await resp.aread())[:200])
            if "mcp-session-id" in resp.headers:
                assert self.era != MODERN, "a 2026-07-28 request was given a session"
                self.headers = {
                    **self.headers,
                    "mcp-session-id": resp.headers["mcp-session-id"],
                    "mcp-protocol-version": PROTOCOL,
                }
            if resp.headers["content-type"].startswith("application/json"):
                answer: dict[str, Any] = json.loads(await resp.aread())
                return answer
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    parsed: dict[str, Any] = json.loads(line[5:])
                    if parsed.get("id") == message["id"]:
                        return parsed
        return None

    async def notify(self, message: dict[str, Any]) -> int:
        return (await self.hc.post(self.url, json=message, headers=self.headers)).status_code


async def fresh_call_succeeds(url: str) -> None:
    """A new SDK client stores successfully in each era: the server is healthy."""
    for mode in ERAS:
        async with mcp_http(f"{url}/mcp", mode=mode) as client:
            assert client.protocol_version == (MODERN if mode == MODERN else PROTOCOL)
            result = await client.call_tool("store_credential", ARGS)
        assert result.is_error is False, result
    async with httpx2.AsyncClient(timeout=10) as hc:
        assert (await hc.get(f"{url}/healthz")).status_code == 200


# ------------------------------------------------------------------------------------------------
# Cancellation over stdio


@pytest.mark.parametrize("era", ERAS)
async def test_stdio_cancellation_abandons_the_upstream_request_and_leaks_nothing(era: str) -> None:
    """``notifications/cancelled`` for an in-flight call: the server closes the upstream connection,
    and ten such cycles leave no upstream connection or file descriptor behind, in an initialize-era
    session and for 2026-07-28 requests alike. Raw JSON-RPC, so the test controls each message."""
    cycles = 10
    with watch_upstream(hang=True) as up, raw_stdio(env_for(up)) as raw:
        start_raw(raw, era)  # and the server is up: its file descriptors can be counted
        fds_before = open_fds(raw.proc.pid)
        # Cancels naming nothing in flight (any JSON may sit in requestId) change nothing.
        for odd in ([1], {"id": 1}, None, True, 1.5, "no-such-request", 99):
            raw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": odd}})
        for i in range(1, cycles + 1):
            raw.send(call_msg(i, era=era))
            await up.until(lambda u, n=i: len(u.requests) >= n, 10, f"request {i} arrives")
            raw.send(cancel_msg(i))
            await up.until(lambda u, n=i: u.abandoned >= n, 5, f"request {i} abandoned")
        await up.until(lambda u: u.in_flight == 0 and u.open_connections == 0, 5, "all connections closed")
        # The server stays healthy: the next call is stored.
        up.hang = False
        raw.send(call_msg(100, era=era))
        answer = raw.recv_id(100)
        assert answer["result"]["isError"] is False, answer
        assert ("resultType" in answer["result"]) is (era == MODERN), answer
        assert open_fds(raw.proc.pid) <= fds_before + 1  # at most the one new keep-alive connection
        # No answer but the cancelled-request notices the SDK sends (code 0), never a result.
        for line in raw.raw_lines:
            msg = json.loads(line)
            if isinstance(msg.get("id"), int) and 1 <= msg["id"] <= cycles:
                assert "result" not in msg, msg
        # Prompt exit on EOF: the cancelled calls will never be answered, so they are not waited for.
        closed = time.monotonic()
        assert raw.close() == 0
        assert time.monotonic() - closed < 3.0
    assert up.abandoned == cycles and up.answered == 1
    assert_clean(raw.err.text())


# ------------------------------------------------------------------------------------------------
# Cancellation over streamable HTTP


async def test_http_cancel_notification_abandons_the_upstream_request() -> None:
    """Streamable HTTP, stateful session: ``notifications/cancelled`` (POSTed in the same session)
    makes the server drop the upstream request at once; the session and the server stay usable."""
    with watch_upstream(hang=True) as up, http_server(env_for(up), ("--transport", "streamable-http")) as srv:
        async with httpx2.AsyncClient(timeout=30) as hc:
            session = RawHttpSession(hc, srv.url)
            await session.open()
            answers: list[dict[str, Any] | None] = []

            async def call() -> None:
                answers.append(await session.request(call_msg(7)))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
                    assert await session.notify(cancel_msg(7)) == 202
                    await up.until(lambda u: u.abandoned == 1, 5, "upstream request abandoned")
            # The call's stream ended; if it carried anything, it is not a result.
            assert answers == [None] or "result" not in (answers[0] or {}), answers
            up.hang = False
            again = await session.request(call_msg(8))
            assert again is not None and again["result"]["isError"] is False, again
        await fresh_call_succeeds(srv.url)
        assert srv.proc.poll() is None
    assert_clean(srv.err.text())


async def test_http_stateless_disconnect_abandons_the_upstream_request() -> None:
    """Stateless streamable HTTP: a client that drops its connection mid-call cancels the call. (A
    2026-07-28 request is stateless on any server: see the SDK client test below.)"""
    with (
        watch_upstream(hang=True) as up,
        http_server(env_for(up), ("--transport", "streamable-http", "--stateless")) as srv,
    ):
        async with httpx2.AsyncClient(timeout=30) as hc:
            session = RawHttpSession(hc, srv.url)
            await session.open()
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(session.request, call_msg(3))
                    await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
                    tg.cancel_scope.cancel()
                await hc.aclose()  # the TCP connection goes away
                await up.until(lambda u: u.abandoned == 1, 5, "upstream request abandoned")
        up.hang = False
        await fresh_call_succeeds(srv.url)
    assert_clean(srv.err.text())


async def test_http_stateful_disconnect_is_bounded_by_the_upstream_timeout() -> None:
    """Stateful streamable HTTP: a dropped connection is *not* a cancellation for protocol versions up
    to 2025-11-25 ("Disconnection SHOULD NOT be interpreted as the client cancelling its request"),
    so the call runs on; it must still end within the configured upstream timeout, its answer must be
    dropped quietly, and the server must stay healthy."""
    with watch_upstream(hang=True) as up:
        env = env_for(up, DANUBE_TIMEOUT="2", DANUBE_MAX_RETRIES="0")
        with http_server(env, ("--transport", "streamable-http")) as srv:
            async with httpx2.AsyncClient(timeout=30) as hc:
                session = RawHttpSession(hc, srv.url)
                await session.open()
                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(session.request, call_msg(3))
                        await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
                        dropped = time.monotonic()
                        tg.cancel_scope.cancel()
                    await hc.aclose()  # the TCP connection goes away
                    await up.until(lambda u: u.abandoned == 1, 10, "upstream request given up")
                    assert time.monotonic() - dropped < 2 + SLACK
            up.hang = False
            await fresh_call_succeeds(srv.url)
            assert len(up.requests) == 1 + len(ERAS)  # the dropped call was not retried
            assert srv.proc.poll() is None
        assert_clean(srv.err.text())


# ------------------------------------------------------------------------------------------------
# Cancellation by the SDK client


@pytest.mark.parametrize("mode", [MODERN])
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_sdk_client_giving_up_on_a_call_abandons_the_upstream_request(
    transport: str, mode: str
) -> None:
    """The 2.x SDK client tells the server when its caller gives up on a 2026-07-28 call: a
    courtesy ``notifications/cancelled`` over stdio, or closing the request's response stream over
    HTTP (a disconnect; the server is the default one, which also keeps sessions, yet a 2026
    request has none). Either way the server drops the upstream request at once (the default
    upstream timeout is 30 s), and the same client's next call is stored. (The initialize era's
    cancellation, ``notifications/cancelled`` on stdio or in an HTTP session, is tested raw above.)"""
    with watch_upstream(hang=True) as up, contextlib.ExitStack() as stack:
        env = env_for(up)
        async with contextlib.AsyncExitStack() as astack:
            client: Client
            if transport == "stdio":
                client, err = await astack.enter_async_context(mcp_stdio(env, mode=mode))
                stderr = err.text
            else:
                srv = stack.enter_context(http_server(env, ("--transport", "streamable-http")))
                client = await astack.enter_async_context(mcp_http(f"{srv.url}/mcp", mode=mode))
                stderr = srv.err.text
            assert client.protocol_version == (MODERN if mode == MODERN else PROTOCOL)
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "store_credential", ARGS)
                    await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
                    tg.cancel_scope.cancel()
                await up.until(lambda u: u.abandoned == 1, 5, "upstream request abandoned")
                up.hang = False
                again = await client.call_tool("store_credential", ARGS)
            assert again.is_error is False, again
            assert len(up.requests) == 2 and up.answered == 1
        assert_clean(stderr())


# ------------------------------------------------------------------------------------------------
# Shutdown


@dataclass
class Outcome:
    kind: str  # "ok", "error-result", "jsonrpc-error", "no-answer", "http-error", "transport-error"
    detail: str = ""


async def call_and_classify(url: str, index: int, outcomes: list[Outcome], era: str) -> None:
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, connect=5)) as hc:
        session = RawHttpSession(hc, url, era)
        await session.open()
        try:
            answer = await session.request(call_msg(1, {**ARGS, "service_id": f"svc-{index}"}, era))
        except httpx2.TransportError as exc:
            outcomes.append(Outcome("transport-error", type(exc).__name__))
            return
        except HttpStatus as exc:  # uvicorn answers 500 for a request it cancels before any response
            outcomes.append(Outcome("http-error", str(exc.status)))
            return
    if answer is None:
        outcomes.append(Outcome("no-answer"))
    elif "error" in answer:
        outcomes.append(Outcome("jsonrpc-error", json.dumps(answer["error"])))
    elif answer["result"]["isError"]:
        outcomes.append(Outcome("error-result", answer["result"]["content"][0]["text"][:120]))
    else:
        outcomes.append(Outcome("ok"))


async def sigterm_with_calls_in_flight(
    srv: HttpServer, up: WatchUpstream, calls: int, era: str
) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    with anyio.fail_after(GRACE + SLACK + 20):  # the calls must end: a hang fails here
        async with anyio.create_task_group() as tg:
            for i in range(calls):
                tg.start_soon(call_and_classify, srv.url, i, outcomes, era)
            await up.until(lambda u: len(u.requests) == calls, 15, f"{calls} calls reach upstream")
            signalled = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = await anyio.to_thread.run_sync(srv.proc.wait, GRACE + SLACK)
            exited_after = time.monotonic() - signalled
    assert code == 0, srv.err.text()[-2000:]
    assert len(outcomes) == calls
    return outcomes, exited_after


SLOW: Final = (
    2.0  # seconds upstream: well inside the 3 s grace period, longer than sse-starlette's 0.5 s poll
)


@pytest.mark.parametrize(
    ("flags", "hang", "era"),
    [
        pytest.param((), False, "legacy", id="sse-slow"),
        pytest.param((), True, "legacy", id="sse-hung"),
        pytest.param(("--json-response",), False, "legacy", id="json-slow"),
        pytest.param(("--json-response",), True, "legacy", id="json-hung"),
    ],
)
async def test_sigterm_with_calls_in_flight_ends_them_cleanly_and_exits(
    flags: tuple[str, ...], hang: bool, era: str
) -> None:
    """SIGTERM with 8 calls in flight (upstream slow, or never answering): every call ends, as a result
    or as a clean failure (an error result, a JSON-RPC error, a closed stream), none hangs; the upstream
    is left with nothing open; the process exits 0 within the grace period plus slack, with no
    traceback."""
    with (
        watch_upstream(hang=hang, delay=SLOW) as up,
        http_server(env_for(up), ("--transport", "streamable-http", *flags)) as srv,
    ):
        outcomes, exited_after = await sigterm_with_calls_in_flight(srv, up, 8, era)
        await up.until(lambda u: u.open_connections == 0, 5, "upstream connections closed")
        stderr = srv.err.text()
    if hang:
        assert all(o.kind != "ok" for o in outcomes), outcomes
    assert exited_after < GRACE + SLACK
    assert_clean(stderr)


@pytest.mark.parametrize(
    ("flags", "era"),
    [
        pytest.param((), "legacy", id="sse"),
        pytest.param(("--json-response",), "legacy", id="json"),
        pytest.param((), MODERN, id="2026-sse"),
    ],
)
async def test_sigterm_lets_calls_finish_inside_the_grace_period(flags: tuple[str, ...], era: str) -> None:
    """Calls that need 2 s upstream, SIGTERM once all 8 have reached it: with a 3 s grace period they
    all complete and their results reach the clients, in sessions and as 2026-07-28 requests."""
    with (
        watch_upstream(delay=SLOW) as up,
        http_server(env_for(up), ("--transport", "streamable-http", *flags)) as srv,
    ):
        outcomes, exited_after = await sigterm_with_calls_in_flight(srv, up, 8, era)
        stderr = srv.err.text()
    assert [o.kind for o in outcomes] == ["ok"] * 8, outcomes
    assert up.answered == 8
    assert exited_after < GRACE + SLACK
    assert "without completing response" not in stderr
    assert_clean(stderr)


def start_raw(raw: RawStdio, era: str) -> None:
    """Open the conversation as a client of ``era`` does; returns once the server has answered,
    and its SDK is serving (the fast start answers the handshake before the SDK has loaded, so a
    call that only the SDK answers follows it)."""
    if era == MODERN:
        raw.send({"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": modern_meta()}})
        assert MODERN in raw.recv_id(0)["result"]["supportedVersions"]
    else:
        raw.initialize()
    params: dict[str, Any] = {"name": "no_such_tool", "arguments": {}}
    if era == MODERN:
        params["_meta"] = modern_meta()
    raw.send({"jsonrpc": "2.0", "id": "sdk-ready", "method": "tools/call", "params": params})
    assert raw.recv_id("sdk-ready")["result"]["isError"] is True


@pytest.mark.parametrize(
    ("era", "hang"),
    [pytest.param("legacy", True, id="legacy-hung"), pytest.param(MODERN, False, id="2026-slow")],
)
async def test_stdio_stdin_closed_with_a_call_in_flight_finishes_it_or_gives_up_in_bounded_time(
    era: str, hang: bool
) -> None:
    """stdin closes while a call is in flight: the server gives the call up to ``EOF_GRACE`` to
    finish and writes its answer (so ``printf ... | danube-mcp`` gets every answer), then exits 0.
    A call that cannot finish (the upstream never answers) is abandoned when the grace ends, so the
    exit stays bounded. (A host that will not wait sends SIGTERM: see the next test.)"""
    with watch_upstream(hang=hang, delay=1.0) as up, raw_stdio(env_for(up)) as raw:
        start_raw(raw, era)
        raw.send(call_msg(1, era=era))
        await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
        closed = time.monotonic()
        assert raw.proc.stdin is not None
        raw.proc.stdin.close()
        code = await anyio.to_thread.run_sync(raw.proc.wait, EOF_GRACE + 10)
        elapsed = time.monotonic() - closed
        if hang:
            await up.until(lambda u: u.abandoned == 1, 5, "upstream request abandoned")
            assert elapsed < EOF_GRACE + 3.0  # bounded by the grace; slack for a loaded machine
            answers = [json.loads(line) for line in raw.raw_lines]
            assert all("result" not in a for a in answers if a.get("id") == 1), raw.raw_lines
        else:
            answer = raw.recv_id(1)  # written before the exit
            assert answer["result"]["isError"] is False, answer
            assert elapsed < 1.0 + 3.0
    assert code == 0
    assert_clean(raw.err.text())


@pytest.mark.parametrize("era", ERAS)
async def test_stdio_sigterm_with_a_call_in_flight_exits_promptly(era: str) -> None:
    with watch_upstream(hang=True) as up, raw_stdio(env_for(up)) as raw:
        start_raw(raw, era)
        raw.send(call_msg(1, era=era))
        await up.until(lambda u: len(u.requests) == 1, 10, "the call reaches upstream")
        signalled = time.monotonic()
        raw.proc.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(raw.proc.wait, 10)
        elapsed = time.monotonic() - signalled
        await up.until(lambda u: u.abandoned == 1, 5, "upstream request abandoned")
    assert code in (0, -signal.SIGTERM), code
    assert elapsed < 3.0
    assert_clean(raw.err.text())


# ------------------------------------------------------------------------------------------------
# Crash safety of the sandbox


SANDBOX_KEY: Final = "crash-key"
WRITERS: Final = 32
SERVICES_PER_WRITER: Final = 2
ACKS_BEFORE_KILL: Final = (150, 400, 700)  # acknowledged stores per round before SIGKILL


def writer_services(writer: int) -> list[str]:
    return [f"svc_crash_{writer:02d}_{j}" for j in range(SERVICES_PER_WRITER)]


@dataclass
class Ledger:
    """Per service: the last value acknowledged with 200 (or found durable after a crash), and the value
    in flight (sent, unanswered) when the sandbox died."""

    acked: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)
    acks: int = 0
    failures: int = 0
    target: int = 0
    reached: anyio.Event = field(default_factory=anyio.Event)


async def crash_writer(url: str, writer: int, round_no: int, ledger: Ledger) -> None:
    services = writer_services(writer)
    headers = {"danube-api-key": SANDBOX_KEY}
    async with httpx2.AsyncClient(base_url=url, timeout=10, headers=headers) as hc:
        n = 0
        while True:
            service = services[n % len(services)]
            value = f"v-r{round_no}-w{writer:02d}-{n:06d}"
            n += 1
            ledger.in_flight[service] = value
            try:
                resp = await hc.post(
                    "/v1/credentials/store",
                    json={"service_id": service, "credential_type": "api_key", "credential_value": value},
                )
            except httpx2.TransportError:
                ledger.failures += 1
                return  # the sandbox is gone; the value stays "in flight"
            assert resp.status_code == 200, resp.text[:200]
            assert resp.json()["success"] is True
            ledger.acked[service] = value
            del ledger.in_flight[service]
            ledger.acks += 1
            if ledger.acks >= ledger.target:
                ledger.reached.set()


def check_database(db_path: Path, ledger: Ledger) -> dict[str, str | None]:
    """Every acknowledged store is present and decrypts to its value, or to the newer value that was
    in flight for the same service when the sandbox died (it may have committed without an answer).
    Returns what each service of the ledger holds."""
    found: dict[str, str | None] = {}
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with open_store(db_path) as store:
        for service in {*ledger.acked, *ledger.in_flight}:
            found[service] = store.reveal_for_tests(SANDBOX_KEY, service)
            allowed = {ledger.acked.get(service), ledger.in_flight.get(service)}
            if service in ledger.acked:
                allowed.discard(None)  # acknowledged: it must be there
            assert found[service] in allowed, (service, found[service], allowed)
        listed = {c.service_id for c in store.list_credentials_sync(SANDBOX_KEY)}
    assert set(ledger.acked) <= listed
    return found


async def verify_after_crash(db_path: Path, ledger: Ledger) -> None:
    found = await anyio.to_thread.run_sync(check_database, db_path, ledger)
    # What survived is now the value each service must keep (an unacknowledged store that committed
    # counts from here on), and nothing is in flight any more.
    ledger.acked.update({service: value for service, value in found.items() if value is not None})
    ledger.in_flight.clear()


async def test_sandbox_survives_sigkill_under_32_writers(tmp_path: Path) -> None:
    services = [{"id": s, "name": f"Crash {s}"} for w in range(WRITERS) for s in writer_services(w)]
    services_file = tmp_path / "services.json"
    services_file.write_text(json.dumps(services))
    db_path = tmp_path / "crash.db"
    extra = ("--services", str(services_file), "--log-level", "warning")
    ledger = Ledger()
    with anyio.fail_after(240):
        for round_no, threshold in enumerate(ACKS_BEFORE_KILL):
            with start_sandbox(tmp_path, api_keys=(SANDBOX_KEY,), extra_args=extra, db_path=db_path) as sb:
                if round_no:
                    # The restarted sandbox opened the database the previous one died on.
                    await verify_after_crash(db_path, ledger)
                ledger.target = ledger.acks + threshold
                ledger.reached = anyio.Event()
                failures_before = ledger.failures
                async with anyio.create_task_group() as tg:
                    for w in range(WRITERS):
                        tg.start_soon(crash_writer, sb.url, w, round_no, ledger)
                    await ledger.reached.wait()
                    sb.proc.kill()  # SIGKILL while 32 writers are storing
                assert sb.proc.wait(10) == -signal.SIGKILL
                assert ledger.failures - failures_before == WRITERS  # every writer was cut off
                assert ledger.in_flight  # and some stores were in flight when it died
        with start_sandbox(tmp_path, api_keys=(SANDBOX_KEY,), extra_args=extra, db_path=db_path) as sb:
            await verify_after_crash(db_path, ledger)
            # ...and it still works: one more store is acknowledged and counted.
            async with httpx2.AsyncClient(base_url=sb.url, headers={"danube-api-key": SANDBOX_KEY}) as hc:
                body = {
                    "service_id": "svc_crash_00_0",
                    "credential_type": "api_key",
                    "credential_value": "after",
                }
                resp = await hc.post("/v1/credentials/store", json=body)
            assert resp.status_code == 200
            assert (await sandbox_stats(sb.url))["stored"] == 1
    assert len(ledger.acked) == WRITERS * SERVICES_PER_WRITER
    assert ledger.acks >= sum(ACKS_BEFORE_KILL)
