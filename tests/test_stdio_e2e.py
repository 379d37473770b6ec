"""End to end over stdio: a real ``danube-mcp`` process, the SDK client, a real HTTP upstream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procs import REPO, child_env, initialize_request, mcp_stdio, raw_stdio
from upstream import FakeUpstream, Reply

pytestmark = pytest.mark.anyio

API_KEY = "dk-CANARY-e2e-key-0123456789abcdef"
SECRET = "sk-CANARY-e2e-value-fedcba9876543210"
CANARIES = (API_KEY, SECRET)
ARGS = {"service_id": "svc_openai_001", "credential_type": "api_key", "credential_value": SECRET}


def env_for(up: FakeUpstream, **extra: str) -> dict[str, str]:
    return child_env(
        DANUBE_API_KEY=API_KEY,
        DANUBE_API_URL=up.url + "/",
        DANUBE_ORG_ID="org_42",
        DANUBE_MCP_LOG_LEVEL="DEBUG",
        DANUBE_MAX_RETRIES="1",
        **extra,
    )


async def test_store_over_stdio_sends_exactly_the_documented_request(upstream: FakeUpstream) -> None:
    async with mcp_stdio(env_for(upstream)) as (session, err):
        tools = await session.list_tools()
        result = await session.call_tool("store_credential", ARGS)
    assert [t.name for t in tools.tools] == ["store_credential"]
    assert result.is_error is False
    assert result.structured_content == {
        "success": True,
        "service_id": "svc_openai_001",
        "service_name": "Service svc_openai_001",
        "credential_type": "api_key",
    }
    assert len(upstream.requests) == 1
    req = upstream.requests[0]
    assert (req.method, req.path) == ("POST", "/v1/credentials/store")
    assert req.headers["danube-api-key"] == API_KEY
    assert req.headers["danube-org-id"] == "org_42"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("danube-mcp/")
    assert req.json() == ARGS
    stderr = err.text()
    for canary in CANARIES:
        assert canary not in stderr


FAILURES = [
    (Reply(status=401, echo_body=True), "HTTP 401", 1),
    (Reply(status=404, body={"detail": "unknown service"}), "HTTP 404", 1),
    (
        Reply(status=422, body={"detail": [{"loc": ["body", "x"], "msg": "bad", "input": SECRET}]}),
        "x: bad",
        1,
    ),
    (Reply(status=503, echo_body=True), "HTTP 503", 2),  # DANUBE_MAX_RETRIES=1
    (Reply(status=200, body=b"<html>proxy</html>"), "not a JSON object", 1),
    (Reply(close_before=True), "Could not reach Danube", 2),
]


@pytest.mark.parametrize(("reply", "fragment", "attempts"), FAILURES)
async def test_failures_over_stdio_leak_nothing(
    upstream: FakeUpstream, reply: Reply, fragment: str, attempts: int
) -> None:
    upstream.set_default(lambda req: reply)
    async with mcp_stdio(env_for(upstream)) as (session, err):
        result = await session.call_tool("store_credential", ARGS)
        upstream.set_default(lambda req: Reply())
        after = await session.call_tool("store_credential", ARGS)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert fragment in text
    assert len(upstream.requests) == attempts + 1
    assert after.is_error is False
    everything = result.model_dump_json() + err.text()
    for canary in CANARIES:
        assert canary not in everything


def test_stdout_carries_only_json_rpc_and_garbage_gets_spec_answers(upstream: FakeUpstream) -> None:
    with raw_stdio(env_for(upstream)) as raw:
        init = raw.initialize()
        assert init["result"]["serverInfo"]["name"] == "danube-mcp"
        raw.send(b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "store_cred\n')
        assert raw.recv()["error"]["code"] == -32700
        raw.send(b"\xff\xfe not utf-8\n")
        assert raw.recv()["error"]["code"] == -32700
        raw.send({"hello": "world", "id": 3})
        assert raw.recv() == {
            "jsonrpc": "2.0",
            "id": 3,
            "error": {"code": -32600, "message": "Invalid Request: not a JSON-RPC 2.0 message"},
        }
        raw.send({"jsonrpc": "2.0", "id": 4, "method": "no/such/method", "params": {}})
        assert raw.recv_id(4)["error"]["code"] == -32601
        bad_params = {"name": "store_credential", "arguments": [SECRET]}
        raw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": bad_params})
        assert raw.recv_id(5)["error"]["code"] == -32602
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": 6,
                "method": "tools/call",
                "params": {"name": "store_credential", "arguments": ARGS},
            }
        )
        ok = raw.recv_id(6)
        assert ok["result"]["isError"] is False
        code = raw.close()
    assert code == 0
    for line in raw.raw_lines:
        msg = json.loads(line)
        assert msg["jsonrpc"] == "2.0"
    everything = b"".join(raw.raw_lines).decode() + raw.err.text()
    for canary in CANARIES:
        assert canary not in everything


def test_stray_prints_cannot_reach_stdout(upstream: FakeUpstream) -> None:
    """A library that prints to stdout ends up on stderr: fd 1 is not the protocol stream."""
    script = (
        "import os, sys\n"
        "import danube_mcp.transports.stdio as s\n"
        "orig = s.claim_stdout\n"
        "def claim():\n"
        "    handle = orig()\n"
        "    print('STRAY-PRINT')\n"
        "    os.write(1, b'STRAY-FD\\n')\n"
        "    return handle\n"
        "s.claim_stdout = claim\n"
        "import danube_mcp.cli as c\n"
        "sys.exit(c.main([]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=(json.dumps(initialize_request("2025-06-18")) + "\n").encode(),
        capture_output=True,
        env=env_for(upstream),
        cwd=str(REPO),
        timeout=30,
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["id"] == 0
    assert b"STRAY-PRINT" in proc.stderr and b"STRAY-FD" in proc.stderr


def test_version_and_bad_config_exit_cleanly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "danube_mcp", "--version"], capture_output=True, env=child_env(), timeout=30
    )
    assert out.returncode == 0 and out.stdout.decode().startswith("danube-mcp ")
    bad = subprocess.run(
        [sys.executable, "-m", "danube_mcp"],
        capture_output=True,
        env=child_env(DANUBE_API_URL="http://danube.example.com", DANUBE_API_KEY=API_KEY),
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 2
    assert bad.stdout == b""
    lines = bad.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "DANUBE_API_URL" in lines[0] and "https://" in lines[0]
    assert API_KEY not in bad.stderr.decode()


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_over_long_line_ends_the_clients_own_call(upstream: FakeUpstream, mode: str) -> None:
    """A request over the 4 MiB line limit is refused with its own id, so the SDK client's call
    fails at once with -32600 (an answer with id null would leave it waiting for its timeout),
    and the connection keeps serving."""
    from mcp.shared.exceptions import MCPError

    from danube_mcp.transports.stdio import MAX_LINE_BYTES

    huge = {**ARGS, "credential_value": SECRET * (MAX_LINE_BYTES // len(SECRET) + 1)}
    async with mcp_stdio(env_for(upstream), mode=mode) as (session, err):
        with pytest.raises(MCPError) as caught:
            # The timeout only bounds a failing run; a passing one is answered at once.
            await session.call_tool("store_credential", huge, read_timeout_seconds=120)
        after = await session.call_tool("store_credential", ARGS)
    assert caught.value.error.code == -32600
    assert caught.value.error.message == "Invalid Request: message too large"
    assert after.is_error is False
    assert len(upstream.requests) == 1  # only the second call reached Danube
    everything = str(caught.value) + err.text()
    for canary in CANARIES:
        assert canary not in everything


def test_over_long_line_answers_with_the_id_only_for_requests(upstream: FakeUpstream) -> None:
    """Raw bytes: the id is read from the start of the line when the line is a request; a line
    whose id cannot be read, or an over-long response, gets id null."""
    from danube_mcp.transports.stdio import MAX_LINE_BYTES

    pad = "x" * (MAX_LINE_BYTES + 10)

    def refused(rid: object) -> dict[str, object]:
        return {
            "jsonrpc": "2.0",
            "id": rid,
            "error": {"code": -32600, "message": "Invalid Request: message too large"},
        }

    with raw_stdio(env_for(upstream)) as raw:
        raw.initialize()
        # The id after method, params last: the usual order of SDK clients.
        request = {
            "jsonrpc": "2.0",
            "id": "call-1",
            "method": "tools/call",
            "params": {"name": "x", "v": pad},
        }
        raw.send(request)
        assert raw.recv() == refused("call-1")
        # params cut off before the method was seen: still a request.
        raw.send(
            b'{"id": 42, "params": {"v": "'
            + pad.encode()
            + b'"}, "method": "tools/call", "jsonrpc": "2.0"}\n'
        )
        assert raw.recv() == refused(42)
        # The id far behind the long member cannot be read.
        raw.send({"jsonrpc": "2.0", "method": "tools/call", "params": {"v": pad * 2}, "id": 43})
        assert raw.recv() == refused(None)
        # A response (to a request the server never sent) must not end a call of the client's.
        raw.send({"jsonrpc": "2.0", "id": 44, "result": {"v": pad}})
        assert raw.recv() == refused(None)
        # Not an id JSON-RPC allows.
        raw.send({"jsonrpc": "2.0", "id": True, "method": "tools/call", "params": {"v": pad}})
        assert raw.recv() == refused(None)
        raw.send({"jsonrpc": "2.0", "id": 45, "method": "ping"})
        assert raw.recv() == {"jsonrpc": "2.0", "id": 45, "result": {}}
        assert raw.close() == 0


def test_id_with_a_lone_surrogate_is_refused_and_the_server_keeps_serving(upstream: FakeUpstream) -> None:
    """An id escaped as a lone surrogate cannot be written back as UTF-8: it used to end the
    server with a traceback; it gets -32600 with id null instead."""
    with raw_stdio(env_for(upstream)) as raw:
        raw.initialize()
        raw.send(b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "ping"}\n')
        assert raw.recv() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32600, "message": "Invalid Request: id must be a string or an integer"},
        }
        raw.send({"jsonrpc": "2.0", "id": 9, "method": "ping"})
        assert raw.recv() == {"jsonrpc": "2.0", "id": 9, "result": {}}
        assert raw.close() == 0
    assert "Traceback" not in raw.err.text()


def _piped(lines: list[dict[str, object]], fast_start: str, cache: str, **env: str) -> bytes:
    """stdout of a server fed ``lines`` and then EOF."""
    data = b"".join(json.dumps(m, ensure_ascii=False).encode() + b"\n" for m in lines)
    done = subprocess.run(
        [sys.executable, "-m", "danube_mcp", *([] if env else ["--sandbox"])],
        input=data,
        capture_output=True,
        env=child_env(DANUBE_MCP_FAST_START=fast_start, DANUBE_MCP_CACHE_DIR=cache, **env),
        cwd=str(REPO),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


HELLO = initialize_request()
READY = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def test_the_fast_start_writes_the_same_bytes_as_the_sdk_for_non_ascii_ids(tmp_path: Path) -> None:
    lines: list[dict[str, object]] = [HELLO, READY, {"jsonrpc": "2.0", "id": "é\u2028ü", "method": "ping"}]
    cache = str(tmp_path / "cache")
    _piped(lines, "1", cache)  # the first start records the snapshot the next one answers from
    assert any((tmp_path / "cache").iterdir())
    fast, sdk = _piped(lines, "1", cache), _piped(lines, "0", cache)
    assert (
        fast.splitlines()[1]
        == sdk.splitlines()[1]
        == '{"jsonrpc":"2.0","id":"é\u2028ü","result":{}}'.encode()
    )


def test_two_calls_with_one_id_are_both_answered_before_eof_exit(tmp_path: Path) -> None:
    """Both calls are still running when stdin closes: the first answer must not end the wait
    (the EOF wait counts requests per id; a set lost the second of two pings in a review)."""
    args = {"service_id": "svc_1", "credential_type": "bearer", "credential_value": "sk-CANARY-dup-id-4444"}
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "store_credential", "arguments": args},
    }
    with FakeUpstream() as up:
        up.script(Reply(delay=0.3), Reply(delay=0.6))
        out = _piped(
            [HELLO, READY, call, call],
            "0",
            str(tmp_path),
            DANUBE_API_URL=up.url,
            DANUBE_API_KEY="dk_" + "k" * 30,
        )
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a.get("id") for a in answers] == [0, 1, 1], answers
