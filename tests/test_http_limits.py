"""Connection limits of the HTTP server, from the outside: a real ``danube-mcp`` process on
127.0.0.1 and raw sockets (issue 12, item 4).

- Clients over ``--max-connections`` get a 503 (or a closed connection) at once, the ones inside
  the cap keep their connections, and a well-behaved client is served again once they leave.
- A connection that does not send a whole request within ``--read-timeout`` is closed (408 if it
  sent anything), whether it drips its headers, says nothing, or stalls in its body; a slow
  *answer* is not cut.
- When ``accept()`` runs out of descriptors, stderr gets one line without a traceback, not one
  per attempt, and the server recovers when descriptors are free again.
- The soft open-files limit is raised to the hard one at start-up; a cap above what the limit
  allows is lowered, with one line saying so.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import select
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx2
import pytest

from danube_mcp.cli_parser import build_parser
from danube_mcp.config import ConfigError, load_settings
from danube_mcp.transports.http_options import HttpOptions
from procs import LISTENING, REPO, Captured, child_env, initialize_request, modern_meta, wait_for_line
from upstream import FakeUpstream, Reply

SERVER_KEY = "dk-CANARY-limits-key-5555555555555555"
SECRET = "sk-CANARY-limits-value-666666666666"
ARGS = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET}
DRIP_HEAD = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-drip: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    err: Captured
    port: int

    def stderr(self) -> str:
        return self.err.text()


@contextmanager
def serve(
    args: tuple[str, ...],
    *,
    upstream_url: str = "http://127.0.0.1:9",
    preexec: Callable[[], None] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Server]:
    err = Captured()
    env = {**(extra_env or {}), **child_env(DANUBE_API_KEY=SERVER_KEY, DANUBE_API_URL=upstream_url)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "danube_mcp", "--transport", "streamable-http", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err.file,
        env=env,
        cwd=str(REPO),
        preexec_fn=preexec,  # only resource limits, set before exec
    )
    try:
        url = wait_for_line(err.text, LISTENING, proc)
        yield Server(proc, err, int(url.rsplit(":", 1)[1]))
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def connect(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or resets it)."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the server kept the connection open; got {data[:80]!r}")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        except TimeoutError:
            continue
        if not chunk:
            return data
        data += chunk


def closed_by_server(socks: list[socket.socket], count: int, timeout: float) -> dict[socket.socket, bytes]:
    """Wait until ``count`` of ``socks`` are closed by the server; what each of them received."""
    received = dict.fromkeys(socks, b"")
    closed: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for each in socks:
            sel.register(each, selectors.EVENT_READ, each)
        while len(closed) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(closed)} of {count} connections were closed by the server")
            for key, _ in sel.select(remaining):
                s = key.data
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[s] += chunk
                else:
                    closed[s] = received[s]
                    sel.unregister(s)
    return closed


def healthz_status(port: int, timeout: float = 10) -> int | None:
    """The status of ``GET /healthz`` on a new connection; None if it was closed, reset or not
    answered within ``timeout`` instead."""
    try:
        with connect(port, HEALTHZ) as sock:
            data = read_until_closed_or_answered(sock, time.monotonic() + timeout)
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError, TimeoutError):
        return None
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
    return int(m.group(1)) if m else None


def read_until_closed_or_answered(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(delay)  # polling a condition with a deadline
        delay = min(delay * 2, 0.2)


def assert_quiet(text: str, max_bytes: int = 4096) -> None:
    assert "Traceback" not in text
    assert len(text.encode()) < max_bytes, text[-2000:]
    for canary in (SERVER_KEY, SECRET):
        assert canary not in text


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")


def _limit_nofile(soft: int, hard: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


# --------------------------------------------------------------------------------------------
# The connection cap


def test_drip_clients_over_the_cap_are_refused_and_the_server_serves_again_once_they_leave() -> None:
    cap, extra = 4, 20
    with serve(("--max-connections", str(cap), "--read-timeout", "300")) as srv:
        socks = [connect(srv.port, DRIP_HEAD) for _ in range(cap + extra)]
        try:
            refused = closed_by_server(socks, extra, timeout=30)
            # Each refused client got a 503 or, at worst, a reset: nothing else.
            for data in refused.values():
                assert data == b"" or data.startswith(b"HTTP/1.1 503 "), data[:100]
            assert any(d.startswith(b"HTTP/1.1 503 ") for d in refused.values())
            assert b"retry-after: 1" in next(d for d in refused.values() if d)
            held = [s for s in socks if s not in refused]
            assert len(held) == cap
            # The ones inside the cap still have their connections (nothing to read, no EOF).
            with selectors.DefaultSelector() as sel:
                for s in held:
                    sel.register(s, selectors.EVENT_READ)
                assert sel.select(0) == []
            # A well-behaved client is refused cheaply while the cap is full ...
            assert healthz_status(srv.port) in (503, None)
        finally:
            for s in socks:
                s.close()
        # ... and served once the drip clients are gone.
        wait_for(lambda: healthz_status(srv.port) == 200, 20, "/healthz never answered 200 again")
        text = srv.stderr()
    assert_quiet(text)
    # One rate-limited line for the whole burst of refusals, not one per connection.
    lines = [line for line in text.splitlines() if "connection limit reached" in line]
    assert 1 <= len(lines) < extra


@needs_proc
def test_a_burst_of_connections_cannot_overrun_the_cap_or_the_open_files_limit() -> None:
    # 256 open files leave room for 128 connections (at least half the limit); a burst of 400
    # arrives faster than connections reach their protocol, so the cap must hold at accept().
    with serve(("--read-timeout", "300"), preexec=_limit_nofile(256, 256)) as srv:
        socks = [connect(srv.port, DRIP_HEAD) for _ in range(400)]
        try:
            refused = closed_by_server(socks, 400 - 128, timeout=30)
            assert all(d == b"" or d.startswith(b"HTTP/1.1 503 ") for d in refused.values())
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: healthz_status(srv.port, 3) == 200, 30, "/healthz never answered 200 again")
        text = srv.stderr()
    assert_quiet(text)
    assert "cannot accept new connections" not in text


# --------------------------------------------------------------------------------------------
# The read deadline


@pytest.fixture(scope="module")
def upstream_slow() -> Iterator[FakeUpstream]:
    with FakeUpstream(default=lambda req: Reply(delay=1.5)) as up:
        yield up


@pytest.fixture(scope="module")
def quick_deadline(upstream_slow: FakeUpstream) -> Iterator[Server]:
    with serve(("--read-timeout", "0.5"), upstream_url=upstream_slow.url) as srv:
        yield srv
        assert_quiet(srv.stderr())


def drip_headers(sock: socket.socket, deadline: float) -> bytes:
    """Send a request's headers one byte at a time, each as soon as the last has gone out (paced
    by waiting for an answer for 0.1 s), until the server closes the connection."""
    head = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-padding: " + b"a" * 10_000
    for byte in head:
        if time.monotonic() > deadline:
            raise TimeoutError("the server kept reading dripped headers")
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return b""
        if readable(sock, 0.1):
            return read_until_closed(sock, deadline)
    raise AssertionError("the whole dripped request was sent without the server closing")


def readable(sock: socket.socket, timeout: float) -> bool:
    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


def test_dripped_headers_are_answered_408_and_closed(quick_deadline: Server) -> None:
    with connect(quick_deadline.port, b"G") as sock:
        data = drip_headers(sock, time.monotonic() + 20)
    assert data.startswith(b"HTTP/1.1 408 ") or data == b""


def test_a_connection_that_sends_nothing_is_closed(quick_deadline: Server) -> None:
    with connect(quick_deadline.port) as sock:
        assert read_until_closed(sock, time.monotonic() + 20) == b""


def test_a_stalled_body_is_answered_408_and_closed(quick_deadline: Server) -> None:
    head = (
        b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"accept: application/json, text/event-stream\r\ncontent-length: 200\r\n\r\n"
    )
    with connect(quick_deadline.port, head + b'{"jsonrpc":') as sock:
        data = read_until_closed(sock, time.monotonic() + 20)
    assert data.startswith(b"HTTP/1.1 408 ") or data == b""


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(quick_deadline: Server) -> None:
    with connect(quick_deadline.port, HEALTHZ) as sock:
        first = read_until_closed_or_answered(sock, time.monotonic() + 10)
        assert first.startswith(b"HTTP/1.1 200 ")
        length = int(re.search(rb"content-length: (\d+)", first, re.I).group(1))  # type: ignore[union-attr]
        body = first.split(b"\r\n\r\n", 1)[1]
        while len(body) < length:
            body += sock.recv(4096)
        sock.sendall(b"GET /heal")
        data = read_until_closed(sock, time.monotonic() + 20)
    assert data.startswith(b"HTTP/1.1 408 ") or data == b""


def test_a_pipelined_request_left_unfinished_is_answered_408_and_closed(quick_deadline: Server) -> None:
    stalled = (
        b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"accept: application/json, text/event-stream\r\ncontent-length: 200\r\n\r\n{"
    )
    with connect(quick_deadline.port, HEALTHZ + stalled) as sock:
        data = read_until_closed(sock, time.monotonic() + 20)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.count(b"HTTP/1.1 ") == 1 or b"HTTP/1.1 408 " in data


def test_a_slow_answer_is_not_cut_by_the_read_deadline(
    quick_deadline: Server, upstream_slow: FakeUpstream
) -> None:
    # The upstream takes 1.5 s, three times the read deadline: the request itself was complete.
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "store_credential", "arguments": ARGS, "_meta": modern_meta()},
    }
    headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "store_credential",
    }
    with httpx2.Client(timeout=30) as client:
        response = client.post(f"http://127.0.0.1:{quick_deadline.port}/mcp", json=body, headers=headers)
    assert response.status_code == 200
    text = response.text
    payload = text if text.startswith("{") else text.split("data:", 1)[1]
    result = json.loads(payload)["result"]
    assert result["isError"] is False, result
    assert len(upstream_slow.requests) >= 1


# --------------------------------------------------------------------------------------------
# Open files and accept errors


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_nofile(pid: int) -> int:
    text = open(f"/proc/{pid}/limits").read()
    m = re.search(r"Max open files\s+(\d+)\s+(\d+)", text)
    assert m, text
    return int(m.group(1))


def exhaust_descriptors(srv: Server, spare: int) -> None:
    """Leave the running server ``spare`` free descriptors (prlimit from outside, as an operator's
    lowered limit or a leak elsewhere in the process would)."""
    limit = open_fds(srv.proc.pid) + spare
    resource.prlimit(srv.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))


@needs_proc
def test_accept_errors_are_one_line_without_a_traceback_and_the_server_recovers() -> None:
    with serve(("--read-timeout", "300")) as srv:
        exhaust_descriptors(srv, spare=2)
        socks = [connect(srv.port, DRIP_HEAD) for _ in range(6)]
        try:
            wait_for(lambda: "cannot accept new connections" in srv.stderr(), 20, "no accept-error line")
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: healthz_status(srv.port, 3) == 200, 30, "/healthz never answered 200 again")
        srv.proc.terminate()
        assert srv.proc.wait(15) == 0
        text = srv.stderr()
    assert_quiet(text)
    lines = [line for line in text.splitlines() if "cannot accept new connections" in line]
    assert lines and all("Too many open files" in line and "ulimit -n" in line for line in lines)


@pytest.mark.load
@needs_proc
def test_accept_errors_stay_one_line_per_interval_while_descriptors_stay_exhausted() -> None:
    with serve(("--read-timeout", "300")) as srv:
        exhaust_descriptors(srv, spare=2)
        socks = [connect(srv.port, DRIP_HEAD) for _ in range(30)]
        try:
            # The second line comes one interval (10 s) after the first and counts the attempts
            # left out in between: about one a second, not asyncio's 2048 per pass.
            wait_for(lambda: "more like this" in srv.stderr(), 40, "no second accept-error line")
        finally:
            for s in socks:
                s.close()
        text = srv.stderr()
    assert_quiet(text, max_bytes=2048)
    m = re.search(r"cannot accept new connections: .*\((\d+) more like this", text)
    assert m, text
    assert 1 <= int(m.group(1)) < 100


@needs_proc
def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("the hard open-files limit here is too low to show a raise")
    target = 1024 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    with serve((), preexec=_limit_nofile(256, target)) as srv:
        assert soft_nofile(srv.proc.pid) == target
        assert healthz_status(srv.port) == 200
        text = srv.stderr()
    assert_quiet(text)
    assert "DANUBE_MCP_MAX_CONNECTIONS" not in text  # the default cap adapts without a word


@needs_proc
def test_a_cap_above_the_open_files_limit_is_lowered_with_one_line() -> None:
    with serve(("--max-connections", "100000"), preexec=_limit_nofile(512, 512)) as srv:
        assert healthz_status(srv.port) == 200
        text = srv.stderr()
    assert_quiet(text)
    lines = [line for line in text.splitlines() if "DANUBE_MCP_MAX_CONNECTIONS=100000" in line]
    assert len(lines) == 1 and "serving at most 352 connections" in lines[0]


# --------------------------------------------------------------------------------------------
# Settings


def resolve(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> HttpOptions:
    for name in ("DANUBE_MCP_MAX_CONNECTIONS", "DANUBE_MCP_READ_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_strict(argv)
    return HttpOptions.resolve(args, "streamable-http", load_settings(env={}))


def test_settings_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    default = resolve([], {}, monkeypatch)
    assert (default.max_connections, default.read_timeout) == (None, 10.0)
    env = resolve([], {"DANUBE_MCP_MAX_CONNECTIONS": "50", "DANUBE_MCP_READ_TIMEOUT": "2.5"}, monkeypatch)
    assert (env.max_connections, env.read_timeout) == (50, 2.5)
    flags = resolve(
        ["--max-connections", "7", "--read-timeout", "0.5"],
        {"DANUBE_MCP_MAX_CONNECTIONS": "50", "DANUBE_MCP_READ_TIMEOUT": "2.5"},
        monkeypatch,
    )
    assert (flags.max_connections, flags.read_timeout) == (7, 0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DANUBE_MCP_MAX_CONNECTIONS", "0"),
        ("DANUBE_MCP_MAX_CONNECTIONS", "ten"),
        ("DANUBE_MCP_MAX_CONNECTIONS", "٣"),
        ("DANUBE_MCP_READ_TIMEOUT", "0"),
        ("DANUBE_MCP_READ_TIMEOUT", "nan"),
        ("DANUBE_MCP_READ_TIMEOUT", "inf"),
        ("DANUBE_MCP_READ_TIMEOUT", "1e9"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=name):
        resolve([], {name: value}, monkeypatch)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--max-connections", "0"], "--max-connections must be a whole number from 1 to 1000000"),
        (["--max-connections", "sk-CANARY"], "--max-connections must be a whole number"),
        (["--read-timeout", "nan"], "--read-timeout must be a number of seconds from 0.1 to 3600"),
        (["--read-timeout", "sk-CANARY"], "--read-timeout must be a number of seconds"),
    ],
)
def test_bad_flags_are_one_line_exit_2_without_the_value(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_strict(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "sk-CANARY" not in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------
# Session caps under a concurrent initialize flood


def test_concurrent_initialize_requests_cannot_pass_the_same_free_session_slot() -> None:
    async def flood(port: int, n: int) -> list[httpx2.Response]:
        body = initialize_request(rid=1)
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        limits = httpx2.Limits(max_connections=n)
        async with httpx2.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(client.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers) for _ in range(n))
            )

    env = child_env(DANUBE_MCP_MAX_SESSIONS_PER_CALLER="3")
    with serve((), extra_env=env) as srv:
        answers = asyncio.run(flood(srv.port, 24))
        text = srv.stderr()
    opened = [r for r in answers if r.status_code == 200 and "mcp-session-id" in r.headers]
    assert len(opened) == 3
    assert sorted({r.status_code for r in answers if r not in opened}) == [429]
    assert_quiet(text)


def test_malformed_requests_are_logged_once_per_interval_not_once_each() -> None:
    with serve(()) as srv:
        for _ in range(30):
            with connect(srv.port, b"NOT HTTP AT ALL\x00\r\n\r\n") as sock:
                assert read_until_closed(sock, time.monotonic() + 10).startswith(b"HTTP/1.1 400 ")
        text = srv.stderr()
    assert_quiet(text)
    lines = [line for line in text.splitlines() if "Invalid HTTP request" in line]
    assert 1 <= len(lines) < 30
