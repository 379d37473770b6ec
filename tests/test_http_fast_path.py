"""The short road for plain 2026-07-28 tools/call requests (transports/modern_fast.py) answers
exactly as the SDK's own road does, leaves everything that is not plain to the SDK, and the
upstream pool keeps reusing its connections. Real server processes on 127.0.0.1."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from procs import MODERN, child_env, http_server, modern_meta
from upstream import FakeUpstream, Reply

pytestmark = pytest.mark.anyio

SERVER_KEY = "dk-CANARY-fast-server-key-0000000000"
SECRET = "sk-CANARY-fast-value-5555555555555555"
ARGS = {"service_id": "svc_fast_001", "credential_type": "bearer", "credential_value": SECRET}
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/call",
    "mcp-name": "store_credential",
}


def call_body(
    rid: Any = 7, arguments: dict[str, Any] | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {
            "name": "store_credential",
            "arguments": ARGS if arguments is None else arguments,
            "_meta": meta or modern_meta(),
        },
    }


def post(
    url: str, body: Any, headers: dict[str, str] | None = None, raw: list[tuple[str, str]] | None = None
) -> httpx2.Response:
    hdrs = list((headers or HEADERS).items()) + (raw or [])
    return httpx2.post(f"{url}/mcp", content=json.dumps(body).encode(), headers=hdrs, timeout=15)


def answers(url_fast: str, url_sdk: str, body: Any, **kw: Any) -> tuple[httpx2.Response, httpx2.Response]:
    return post(url_fast, body, **kw), post(url_sdk, body, **kw)


def env_for(up: FakeUpstream) -> dict[str, str]:
    return child_env(DANUBE_API_KEY=SERVER_KEY, DANUBE_API_URL=up.url, DANUBE_MCP_LOG_LEVEL="DEBUG")


def test_plain_calls_answer_as_the_sdk_does(upstream: FakeUpstream) -> None:
    env = env_for(upstream)
    json_args = ("--transport", "streamable-http", "--stateless", "--json-response")
    # Without --json-response the 2026 path stays the SDK's (it may have to switch to SSE).
    sdk_args = ("--transport", "streamable-http", "--stateless")
    with http_server(env, json_args) as fast, http_server(env, sdk_args) as sdk:
        cases = [
            call_body(),
            call_body(rid="req-1"),
            call_body(arguments={**ARGS, "credential_type": "nope"}),  # the tool's own error result
            call_body(arguments={"service_id": "svc_fast_001"}),  # no value, no secure input here
            call_body(meta={**modern_meta(), "io.modelcontextprotocol/clientInfo": {"name": "x"}}),
        ]
        for body in cases:
            a, b = answers(fast.url, sdk.url, body)
            assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
            assert a.json() == b.json(), body
        upstream.set_default(lambda req: Reply(status=404, echo_body=True))
        a, b = answers(fast.url, sdk.url, call_body())
        assert a.status_code == b.status_code == 200
        assert a.json() == b.json()
        assert a.json()["result"]["isError"] is True
        for srv in (fast, sdk):
            assert SECRET not in srv.err.text() and SERVER_KEY not in srv.err.text()


def test_requests_that_are_not_plain_get_the_sdks_answers(upstream: FakeUpstream) -> None:
    env = env_for(upstream)
    with http_server(env, ("--transport", "streamable-http", "--stateless", "--json-response")) as srv:
        n = len(upstream.requests)
        # A duplicated routing header, a mismatched Mcp-Name, an undeclared Mcp-Param header: the
        # SDK's refusals (400, HeaderMismatch or its param check), never a store.
        dup = post(srv.url, call_body(), raw=[("mcp-method", "tools/call")])
        assert dup.status_code == 400 and dup.json()["error"]["code"] == -32020
        wrong_name = post(srv.url, call_body(), headers={**HEADERS, "mcp-name": "other_tool"})
        assert wrong_name.status_code == 400 and wrong_name.json()["error"]["code"] == -32020
        no_caps_meta = {k: v for k, v in modern_meta().items() if not k.endswith("clientCapabilities")}
        missing = post(srv.url, call_body(meta=no_caps_meta))
        assert missing.status_code == 400 and missing.json()["error"]["code"] == -32602
        bool_id = post(srv.url, call_body(rid=True))
        assert bool_id.status_code == 400
        assert len(upstream.requests) == n
        # A progress token makes the request not plain; the SDK serves it (JSON mode: no stream).
        meta = {**modern_meta(), "progressToken": "p1"}
        served = post(srv.url, call_body(meta=meta))
        assert served.status_code == 200 and served.json()["result"]["isError"] is False
        # Wrong Accept: the SDK's 406.
        assert (
            post(srv.url, call_body(), headers={**HEADERS, "accept": "text/event-stream"}).status_code == 406
        )
        assert SECRET not in srv.err.text()


def test_upstream_connections_are_reused(upstream: FakeUpstream) -> None:
    """The pool's cheap idle-socket probe must still tell a live idle connection from a closed one:
    sequential calls share one connection, and a connection the upstream closed is replaced."""
    with http_server(
        env_for(upstream), ("--transport", "streamable-http", "--stateless", "--json-response")
    ) as srv:
        for i in range(10):
            r = post(srv.url, call_body(rid=i))
            assert r.json()["result"]["isError"] is False
        assert upstream.connections == 1
        # An answer without a length ends by closing the connection: the next call needs a new one.
        upstream.script(Reply(no_length=True))
        assert post(srv.url, call_body(rid=11)).json()["result"]["isError"] is False
        assert post(srv.url, call_body(rid=12)).json()["result"]["isError"] is False
        assert upstream.connections == 2
