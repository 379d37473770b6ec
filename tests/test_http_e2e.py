"""HTTP transports end to end: a real ``danube-mcp`` process on 127.0.0.1, the SDK's clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client

from procs import MODES, REPO, Captured, HttpServer, child_env, http_server, mcp_http, mcp_sse
from upstream import FakeUpstream, Reply

pytestmark = pytest.mark.anyio

SERVER_KEY = "dk-CANARY-server-key-00000000000000"
KEY_A = "dk-CANARY-caller-A-1111111111111111"
KEY_B = "dk-CANARY-caller-B-2222222222222222"
TOKEN = "tok-CANARY-access-token-3333333333"
SECRET = "sk-CANARY-http-value-4444444444444444"
CANARIES = (SERVER_KEY, KEY_A, KEY_B, TOKEN, SECRET)
ARGS = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET}
ACCEPT = "application/json, text/event-stream"


def env_for(up: FakeUpstream, **extra: str) -> dict[str, str]:
    return child_env(DANUBE_API_KEY=SERVER_KEY, DANUBE_API_URL=up.url, DANUBE_MCP_LOG_LEVEL="DEBUG", **extra)


@asynccontextmanager
async def streamable(
    url: str, headers: dict[str, str] | None = None, *, mode: str = "legacy", **client_kw: Any
) -> AsyncIterator[Client]:
    async with mcp_http(f"{url}/mcp", mode=mode, headers=headers, **client_kw) as client:
        yield client


@asynccontextmanager
async def legacy_sse(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    async with mcp_sse(f"{url}/sse", headers=headers) as client:
        yield client


def assert_clean(server: HttpServer, *texts: str) -> None:
    everything = server.err.text() + "".join(texts)
    for canary in CANARIES:
        assert canary not in everything


async def exercise(session: Client) -> list[types.CallToolResult]:
    tools = await session.list_tools()
    assert [t.name for t in tools.tools] == ["store_credential"]
    ok = await session.call_tool("store_credential", ARGS)
    assert ok.is_error is False, ok
    assert ok.structured_content is not None and ok.structured_content["success"] is True
    bad = await session.call_tool("store_credential", {**ARGS, "credential_type": SECRET})
    assert bad.is_error is True and "credential_type" in bad.content[0].text  # type: ignore[union-attr]
    return [ok, bad]


@pytest.mark.parametrize(
    "flags",
    [(), ("--stateless",), ("--json-response",), ("--stateless", "--json-response")],
    ids=["stateful", "stateless", "json", "stateless-json"],
)
@pytest.mark.parametrize("mode", MODES)
async def test_streamable_http_modes(upstream: FakeUpstream, flags: tuple[str, ...], mode: str) -> None:
    with http_server(env_for(upstream), ("--transport", "streamable-http", *flags)) as srv:
        async with streamable(srv.url, mode=mode) as session:
            results = await exercise(session)
            expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
            assert session.protocol_version == expected
        upstream.set_default(lambda req: Reply(status=404, echo_body=True))
        async with streamable(srv.url, mode=mode) as session:
            failed = await session.call_tool("store_credential", ARGS)
        assert failed.is_error is True and "HTTP 404" in failed.content[0].text  # type: ignore[union-attr]
        assert_clean(srv, *(r.model_dump_json() for r in [*results, failed]))
    assert upstream.requests[0].headers["danube-api-key"] == SERVER_KEY


async def test_legacy_sse_and_both_on_one_port(upstream: FakeUpstream) -> None:
    with http_server(env_for(upstream), ("--transport", "http")) as srv:
        async with legacy_sse(srv.url) as session:
            sse_results = await exercise(session)
        async with streamable(srv.url) as session:
            http_results = await exercise(session)
        assert_clean(srv, *(r.model_dump_json() for r in sse_results + http_results))
    with http_server(env_for(upstream), ("--transport", "sse")) as srv:
        async with httpx2.AsyncClient() as hc:
            assert (await hc.post(f"{srv.url}/mcp", json={})).status_code == 404


async def test_each_caller_uses_its_own_key_concurrently(upstream: FakeUpstream) -> None:
    with http_server(env_for(upstream), ("--transport", "http")) as srv:

        async def caller(key: str | None, prefix: str, sse: bool, mode: str = "legacy") -> None:
            headers = {"danube-api-key": key} if key else None
            ctx = legacy_sse(srv.url, headers) if sse else streamable(srv.url, headers, mode=mode)
            async with ctx as session, anyio.create_task_group() as tg:
                for i in range(8):
                    args = {**ARGS, "service_id": f"{prefix}-{i}"}
                    tg.start_soon(session.call_tool, "store_credential", args)

        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, KEY_A, "a", False)
            tg.start_soon(caller, KEY_B, "b", False)
            tg.start_soon(caller, KEY_A, "sa", True)
            tg.start_soon(caller, None, "server", False)
            tg.start_soon(caller, KEY_B, "mb", False, "2026-07-28")
        assert_clean(srv)
    expected = {"a": KEY_A, "b": KEY_B, "sa": KEY_A, "server": SERVER_KEY, "mb": KEY_B}
    assert len(upstream.requests) == 40
    for req in upstream.requests:
        prefix = req.json()["service_id"].split("-")[0]
        assert req.headers["danube-api-key"] == expected[prefix]


async def test_require_client_key_refuses_calls_without_one(upstream: FakeUpstream) -> None:
    with http_server(env_for(upstream), ("--transport", "streamable-http", "--require-client-key")) as srv:
        async with streamable(srv.url) as session:
            refused = await session.call_tool("store_credential", ARGS)
        async with streamable(srv.url, {"danube-api-key": "${DANUBE_API_KEY}"}) as session:
            placeholder = await session.call_tool("store_credential", ARGS)
        async with streamable(srv.url, {"danube-api-key": KEY_A}) as session:
            ok = await session.call_tool("store_credential", ARGS)
        async with httpx2.AsyncClient() as hc:
            query = await hc.post(
                f"{srv.url}/mcp?danube-api-key={KEY_B}",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"accept": ACCEPT},
            )
    assert refused.is_error is True and "danube-api-key" in refused.content[0].text  # type: ignore[union-attr]
    assert placeholder.is_error is True and "placeholder" in placeholder.content[0].text  # type: ignore[union-attr]
    assert ok.is_error is False
    assert query.status_code in (400, 404)  # no session: a key in the query string is never used
    assert [r.headers["danube-api-key"] for r in upstream.requests] == [KEY_A]


async def test_access_token(upstream: FakeUpstream) -> None:
    env = env_for(upstream, DANUBE_MCP_AUTH_TOKEN=TOKEN)
    with http_server(env, ("--transport", "http")) as srv:
        async with httpx2.AsyncClient() as hc:
            init = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            for headers in (
                {},
                {"authorization": "Bearer wrong-token-xxxxxxxxxxx"},
                {"authorization": TOKEN},
            ):
                r = await hc.post(f"{srv.url}/mcp", json=init, headers={"accept": ACCEPT, **headers})
                assert r.status_code == 401
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert r.json()["error"] == "invalid_token"
                assert TOKEN not in r.text
            r = await hc.get(f"{srv.url}/sse")
            assert r.status_code == 401
            r = await hc.post(f"{srv.url}/messages/?session_id=x", json=init)
            assert r.status_code == 401
            health = await hc.get(f"{srv.url}/healthz")
            assert health.status_code == 200 and health.json() == {"status": "ok"}
        auth = {"authorization": f"Bearer {TOKEN}"}
        async with streamable(srv.url, auth) as session:
            await exercise(session)
        async with legacy_sse(srv.url, auth) as session:
            await exercise(session)
        assert_clean(srv)


async def test_host_and_origin_checks(upstream: FakeUpstream) -> None:
    args = (
        "--transport",
        "http",
        "--allowed-host",
        "mcp.example.com",
        "--allowed-origin",
        "https://app.example.com",
    )
    with http_server(env_for(upstream), args) as srv:
        port = srv.url.rsplit(":", 1)[1]
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}

        async def post(headers: dict[str, str]) -> httpx2.Response:
            async with httpx2.AsyncClient() as hc:
                return await hc.post(f"{srv.url}/mcp", json=body, headers={"accept": ACCEPT, **headers})

        assert (await post({"host": "evil.com"})).status_code == 421
        assert (await post({"host": f"evil.com:{port}"})).status_code == 421
        assert (await post({"origin": "http://evil.com"})).status_code == 403
        assert (await post({"origin": "null"})).status_code == 403
        async with httpx2.AsyncClient() as hc:
            r = await hc.get(f"{srv.url}/sse", headers={"host": "evil.com"})
            assert r.status_code == 421
        # Allowed: loopback names with or without a port, the extra host and origin. A session
        # id is missing, so the SDK answers 400, which proves the request got past the checks.
        for headers in (
            {"host": "localhost"},
            {"host": f"localhost:{port}"},
            {"host": f"127.0.0.1:{port}"},
            {"host": "mcp.example.com"},
            {"host": "mcp.example.com:443"},
            {"origin": f"http://localhost:{port}"},
            {"origin": "https://app.example.com"},
        ):
            assert (await post(headers)).status_code == 400, headers
        assert_clean(srv)


async def test_bodies_are_limited_and_never_echoed(upstream: FakeUpstream) -> None:
    with http_server(env_for(upstream), ("--transport", "http")) as srv:
        async with httpx2.AsyncClient() as hc:
            headers = {"accept": ACCEPT, "content-type": "application/json"}
            bad_shape = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [SECRET]})
            r1 = await hc.post(f"{srv.url}/mcp", content=bad_shape, headers=headers)
            r2 = await hc.post(f"{srv.url}/mcp", content=b'{"broken": "' + SECRET.encode(), headers=headers)
            big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": SECRET * 40000}})
            r3 = await hc.post(f"{srv.url}/mcp", content=big, headers=headers)
            r4 = await hc.post(f"{srv.url}/messages/?session_id=0123", content=big, headers=headers)

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(40):
                    yield SECRET.encode() * 1000

            r5 = await hc.post(f"{srv.url}/mcp", content=chunks(), headers=headers)
            r6 = await hc.post(
                f"{srv.url}/mcp", content=SECRET, headers={"accept": ACCEPT, "content-type": "text/plain"}
            )
            health = await hc.get(f"{srv.url}/healthz")
        assert (r1.status_code, r2.status_code, r3.status_code, r4.status_code, r5.status_code) == (
            400,
            400,
            413,
            413,
            413,
        )
        assert r6.status_code in (400, 415)
        assert health.status_code == 200
        assert_clean(srv, *(r.text for r in (r1, r2, r3, r4, r5, r6)))


async def test_calls_overlap_instead_of_serialising(upstream: FakeUpstream) -> None:
    # The upstream holds every answer until 32 requests are in flight at once: if the server
    # serialised calls anywhere, this would never complete.
    upstream.set_default(lambda req: Reply(barrier=32))
    with http_server(env_for(upstream), ("--transport", "streamable-http")) as srv:
        results: list[types.CallToolResult] = []

        async def one(i: int) -> None:
            async with streamable(srv.url) as session:
                results.append(await session.call_tool("store_credential", {**ARGS, "service_id": f"s{i}"}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(one, i)
    assert len(results) == 32 and not any(r.is_error for r in results)
    assert upstream.max_in_flight == 32


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (("--host", "0.0.0.0"), {}, "--allowed-host"),
        (("--host", "0.0.0.0", "--allowed-host", "mcp.example.com"), {}, "access token"),
        (("--port", "70000"), {}, "port"),
        ((), {"DANUBE_MCP_AUTH_TOKEN": "short"}, "at least 16"),
        ((), {"DANUBE_MCP_AUTH_TOKEN": "${TOKEN}"}, "placeholder"),
        (("--auth-token-file", "/nonexistent/token"), {}, "cannot be read"),
    ],
)
def test_unsafe_or_bad_http_setups_refuse_to_start(
    upstream: FakeUpstream, args: tuple[str, ...], env: dict[str, str], words: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "danube_mcp", "--transport", "streamable-http", *args],
        env=env_for(upstream, **env),
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
    )
    assert proc.returncode == 2
    assert words in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert proc.stdout == b""


def test_sigterm_with_open_streams_exits_promptly(upstream: FakeUpstream) -> None:
    srv = HttpServer(env_for(upstream), ("--transport", "http"))
    try:
        with httpx2.Client(timeout=10) as hc, hc.stream("GET", f"{srv.url}/sse") as stream:
            first = next(stream.iter_lines())
            assert first.startswith("event: endpoint")
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = srv.proc.wait(15)
            elapsed = time.monotonic() - started
    finally:
        srv.stop()
    assert code == 0
    assert elapsed < 10  # a generous bound on "a few seconds", not a performance figure
    assert "Traceback" not in srv.err.text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def two_workers(upstream: FakeUpstream) -> Iterator[str]:
    port = _free_port()
    err = Captured()
    env = env_for(
        upstream,
        DANUBE_MCP_STATELESS="1",
        DANUBE_MCP_TRANSPORT="streamable-http",
        DANUBE_MCP_AUTH_TOKEN=TOKEN,
    )
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "danube_mcp.http:create_app"),
            *("--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
        ],
        env={**env, "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=err.file,
        cwd=str(REPO),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(err.text())
            time.sleep(0.05)  # polling the health endpoint with a deadline
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        stdout = proc.stdout.read() if proc.stdout else b""
        for canary in CANARIES:
            assert canary.encode() not in stdout
            assert canary not in err.text()


async def test_under_uvicorn_with_two_workers(upstream: FakeUpstream, two_workers: str) -> None:
    async def one(i: int) -> None:
        async with streamable(two_workers, {"authorization": f"Bearer {TOKEN}"}) as session:
            r = await session.call_tool("store_credential", {**ARGS, "service_id": f"w{i}"})
            assert r.is_error is False

    async with anyio.create_task_group() as tg:
        for i in range(16):
            tg.start_soon(one, i)
    assert sorted(r.json()["service_id"] for r in upstream.requests) == sorted(f"w{i}" for i in range(16))


def test_factory_mode_assumes_a_public_bind(upstream: FakeUpstream) -> None:
    """Under an external ASGI server the bind address is unknown: with the operator's key and no
    token or --require-client-key, the factory refuses rather than risk a public, open server."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "danube_mcp.http:create_app",
            "--port",
            "0",
        ],
        env=env_for(upstream, DANUBE_MCP_STATELESS="1"),
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
    )
    assert proc.returncode == 2
    assert b"no access token" in proc.stderr
    assert SERVER_KEY.encode() not in proc.stderr + proc.stdout


def test_draining_refuses_only_new_sessions() -> None:
    from danube_mcp.transports.http import _opens_session

    assert _opens_session({"headers": []}, "/mcp") is True
    assert _opens_session({"headers": [(b"mcp-session-id", b"abc")]}, "/mcp") is False
    assert _opens_session({"headers": []}, "/sse") is True
    assert _opens_session({"headers": []}, "/messages/") is False


@pytest.mark.parametrize("mode", MODES)
async def test_http_caller_without_a_key_is_told_to_send_the_header(mode: str) -> None:
    """Over HTTP the fix is the caller's header, not a desktop host's config file (issue 15.4)."""
    with http_server(child_env(), ("--transport", "streamable-http")) as srv:
        async with mcp_http(f"{srv.url}/mcp", mode=mode) as client:
            result = await client.call_tool(
                "store_credential",
                {
                    "service_id": "svc_1",
                    "credential_type": "bearer",
                    "credential_value": "sk-CANARY-nokey-1234",
                },
            )
    text = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error is True and "'danube-api-key' HTTP header" in text
    assert "claude_desktop_config" not in text and "sk-CANARY" not in text
