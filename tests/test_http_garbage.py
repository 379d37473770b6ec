"""Bad input over HTTP: a real ``danube-mcp --transport http`` process in front of a real sandbox.

Malformed JSON, wrong Content-Type, oversize bodies (Content-Length and chunked), unknown and
missing session ids, requests after DELETE, wrong methods and paths, garbage on the legacy
``/messages/`` endpoint. Each gets the 4xx the MCP streamable-HTTP transport (2025-11-25) and HTTP
call for, the response never quotes the request (a canary rides in every body), nothing of it
reaches stderr (logging at DEBUG), and a normal SDK session works afterwards.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from mcp import Client

from danube_mcp.transports.http import MAX_BODY_BYTES
from procs import HttpServer, child_env, http_server, mcp_http, mcp_sse
from sandbox_proc import start_sandbox

pytestmark = pytest.mark.anyio

# No 8-character piece in common: the log filter drops lines holding a piece of a registered secret
# (the API key), which would hide a canary leak rather than show it.
API_KEY = "dk-sbx-key-7Qm2Rz9Lw4Hn6Tp1"
CANARY = "sk-CANARY-http-b0dy-5e4d3c2b1a09"
CANARIES = (API_KEY, CANARY)

ACCEPT = "application/json, text/event-stream"
JSON_HEADERS = {"accept": ACCEPT, "content-type": "application/json"}
PROTOCOL = "2025-11-25"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "garbage", "version": "0"},
    },
}
GOOD_ARGS = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": CANARY}


def call_body(rid: int, arguments: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "store_credential", "arguments": arguments},
    }


@dataclass
class Served:
    srv: HttpServer
    url: str
    mcp: str
    _mark: int = 0

    def stderr(self) -> str:
        return self.srv.err.text()

    def mark(self) -> None:
        self._mark = len(self.stderr())

    def stderr_since_mark(self) -> str:
        return self.stderr()[self._mark :]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("http-garbage")
    with start_sandbox(tmp, api_keys=[API_KEY]) as sandbox:
        env = child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_API_KEY=API_KEY, DANUBE_API_URL=sandbox.url)
        with http_server(env, ("--transport", "http")) as srv:
            yield Served(srv, srv.url, srv.url + "/mcp")
            stderr = srv.err.text()
        for canary in CANARIES:
            assert canary not in stderr
            assert canary not in sandbox.stderr_text()


@pytest.fixture
def s(served: Served) -> Iterator[Served]:
    """The module's server, with this test's share of stderr marked; checked clean afterwards."""
    served.mark()
    yield served
    assert served.srv.proc.poll() is None
    assert "Traceback" not in served.stderr_since_mark()


# --------------------------------------------------------------------------------------------
# Helpers


def assert_no_echo(*responses: httpx2.Response) -> None:
    for r in responses:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        everything = r.text + json.dumps(dict(r.headers))
        for canary in CANARIES:
            assert canary not in everything
            assert canary[:12] not in everything


def assert_stderr_clean(s: Served) -> None:
    err = s.stderr()
    for canary in CANARIES:
        assert canary not in err


def error_body(r: httpx2.Response) -> dict[str, Any]:
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["jsonrpc"] == "2.0" and isinstance(body["error"]["code"], int)
    return body


@asynccontextmanager
async def streamable(url: str, mode: str = "legacy") -> AsyncIterator[Client]:
    async with mcp_http(f"{url}/mcp", mode=mode) as client:
        yield client


async def assert_serving(s: Served) -> None:
    """A normal SDK session over each transport still lists the tool and stores a credential."""
    async with streamable(s.url) as session:
        tools = await session.list_tools()
        assert [t.name for t in tools.tools] == ["store_credential"]
        ok = await session.call_tool("store_credential", GOOD_ARGS)
        assert ok.is_error is False, ok
        assert CANARY not in ok.model_dump_json()
    async with streamable(s.url, "2026-07-28") as session:
        ok = await session.call_tool("store_credential", {**GOOD_ARGS, "service_id": "svc_github_001"})
        assert ok.is_error is False, ok
    async with mcp_sse(f"{s.url}/sse") as session:
        ok = await session.call_tool("store_credential", {**GOOD_ARGS, "service_id": "svc_github_001"})
        assert ok.is_error is False, ok
    async with httpx2.AsyncClient() as hc:
        assert (await hc.get(f"{s.url}/healthz")).json() == {"status": "ok"}
    assert_stderr_clean(s)


@asynccontextmanager
async def raw_session(s: Served) -> AsyncIterator[tuple[httpx2.AsyncClient, dict[str, str]]]:
    """An initialized streamable-HTTP session by hand: the client and the headers that name it."""
    async with httpx2.AsyncClient(timeout=30) as hc:
        r = await hc.post(s.mcp, json=INIT, headers=JSON_HEADERS)
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]
        headers = {**JSON_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
        note = await hc.post(
            s.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        assert note.status_code == 202
        yield hc, headers


def sse_result(r: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message in a one-event SSE answer."""
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    assert len(data) == 1, r.text
    msg: dict[str, Any] = json.loads(data[0])
    return msg


# --------------------------------------------------------------------------------------------
# Malformed JSON: 400 with a JSON-RPC parse error, body not quoted


MALFORMED = [
    b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {"credential_value": "'
    + CANARY.encode(),
    b"credential_value=" + CANARY.encode(),
    b"{'credential_value': '" + CANARY.encode() + b"'}",
    b'{"credential_value": ' + CANARY.encode() + b"}",
    b"",
    b"   ",
    b'{"a": 1} {"credential_value": "' + CANARY.encode() + b'"}',
]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_json_gets_400_parse_error(s: Served, body: bytes) -> None:
    async with httpx2.AsyncClient() as hc:
        fresh = await hc.post(s.mcp, content=body, headers=JSON_HEADERS)
    async with raw_session(s) as (hc, headers):
        in_session = await hc.post(s.mcp, content=body, headers=headers)
        ping = await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=headers)
    for r in (fresh, in_session):
        assert r.status_code == 400
        assert error_body(r)["error"] == {
            "code": -32700,
            "message": "Parse error: the body is not valid JSON",
        }
    assert_no_echo(fresh, in_session)
    # The session survives a bad body.
    assert sse_result(ping) == {"jsonrpc": "2.0", "id": 9, "result": {}}
    await assert_serving(s)


@pytest.mark.parametrize(
    "body",
    [
        b'{"credential_value": "' + CANARY.encode() + b'\xff\xfe"}',
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ],
    ids=["invalid-utf8", "deeply-nested"],
)
async def test_undecodable_json_gets_400_not_500(s: Served, body: bytes) -> None:
    async with raw_session(s) as (hc, headers):
        r = await hc.post(s.mcp, content=body, headers=headers)
    s.mark()  # the traceback the 500 logs belongs to this bug, not to the fixture's check
    assert r.status_code == 400
    # The 10,000-deep body has 10,000 colons: refused for its value count before any parsing.
    # Invalid UTF-8 fails to parse.
    assert error_body(r)["error"]["code"] == (-32600 if body.count(b":") > 1024 else -32700)


@pytest.mark.parametrize(
    "body",
    [b'{"credential_value": "' + CANARY.encode() + b'\xff\xfe"}', b'{"a":' * 10_000 + b"1" + b"}" * 10_000],
    ids=["invalid-utf8", "deeply-nested"],
)
async def test_undecodable_json_never_echoes_and_the_server_keeps_serving(s: Served, body: bytes) -> None:
    async with raw_session(s) as (hc, headers):
        r = await hc.post(s.mcp, content=body, headers=headers)
        ping = await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 9, "method": "ping"}, headers=headers)
    assert r.status_code in (400, 500)  # 500 today: see test_undecodable_json_gets_400_not_500
    assert CANARY not in r.text
    assert sse_result(ping)["result"] == {}
    await assert_serving(s)
    assert_stderr_clean(s)
    s.mark()  # the 500 logs a traceback (no request data in it); not this test's concern


# --------------------------------------------------------------------------------------------
# JSON that is not a JSON-RPC message: 400, not quoted


@pytest.mark.parametrize(
    "obj",
    [
        {"credential_value": CANARY},
        {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": [CANARY]},
        [{"jsonrpc": "2.0", "id": 5, "method": "ping"}, {"v": CANARY}],  # batches were removed from MCP
        [],
        CANARY,
        42,
        None,
        {"jsonrpc": "1.0", "id": 5, "method": "ping", "params": {"x": CANARY}},
    ],
    ids=["object", "params-array", "batch", "empty-batch", "string", "number", "null", "jsonrpc-1.0"],
)
async def test_json_that_is_not_json_rpc_gets_400(s: Served, obj: Any) -> None:
    async with raw_session(s) as (hc, headers):
        r = await hc.post(s.mcp, content=json.dumps(obj), headers=headers)
    assert r.status_code == 400
    assert error_body(r)["error"]["code"] in (-32600, -32602)
    assert_no_echo(r)
    await assert_serving(s)


MODERN_HEADERS = {
    **JSON_HEADERS,
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "store_credential",
}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def padded_call(rid: int, pad: Any, modern: bool) -> dict[str, Any]:
    body = call_body(rid, {**GOOD_ARGS, "pad": pad})
    if modern:
        body["params"]["_meta"] = MODERN_META
    return body


@pytest.mark.parametrize("modern", [False, True], ids=["initialize-era", "2026"])
async def test_a_body_of_too_many_values_is_refused_before_parsing(s: Served, modern: bool) -> None:
    # ~1,100 tiny values (well under the size limit): refused with 400 before either parse.
    headers_for = (lambda h: MODERN_HEADERS) if modern else (lambda h: h)
    async with raw_session(s) as (hc, headers):
        many = await hc.post(s.mcp, json=padded_call(21, [0] * 1100, modern), headers=headers_for(headers))
        # The same count of commas and colons inside a string is not structure: the call is served
        # and the tool names the unknown argument.
        inside = await hc.post(s.mcp, json=padded_call(22, ",:" * 1100, modern), headers=headers_for(headers))
    assert many.status_code == 400
    assert error_body(many)["error"] == {
        "code": -32600,
        "message": "Invalid Request: more JSON values than any MCP request holds",
    }
    assert_no_echo(many)
    assert inside.status_code == 200
    is_json = inside.headers["content-type"].startswith("application/json")
    msg = inside.json() if is_json else sse_result(inside)
    assert msg["id"] == 22 and msg["result"]["isError"] is True
    assert "pad" in msg["result"]["content"][0]["text"] and CANARY not in inside.text
    await assert_serving(s)


async def test_lone_surrogate_escape_is_refused_cleanly(s: Served) -> None:
    # Valid JSON (RFC 8259 allows any \uXXXX escape): it reaches the tool, which refuses it cleanly.
    body = json.dumps(call_body(7, {**GOOD_ARGS, "credential_value": CANARY + "\ud800"}))
    assert "\\ud800" in body
    async with raw_session(s) as (hc, headers):
        r = await hc.post(s.mcp, content=body, headers=headers)
    if r.status_code == 400:
        # The 2.x SDK's JSON parser refuses lone surrogates outright: a clean 400, nothing quoted.
        assert error_body(r)["error"]["code"] in (-32700, -32600, -32602)
    else:
        msg = sse_result(r)
        assert msg["id"] == 7 and msg["result"]["isError"] is True
        assert msg["result"]["content"][0]["text"].startswith("Invalid arguments: credential_value")
    assert CANARY not in r.text
    assert_stderr_clean(s)


# --------------------------------------------------------------------------------------------
# Wrong Content-Type


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ],
)
async def test_wrong_content_type_is_refused(s: Served, content_type: str | None) -> None:
    headers = {"accept": ACCEPT}
    if content_type is not None:
        headers["content-type"] = content_type
    body = json.dumps(call_body(3, GOOD_ARGS))
    async with httpx2.AsyncClient() as hc:
        fresh = await hc.post(s.mcp, content=body, headers=headers)
    async with raw_session(s) as (hc, session_headers):
        in_headers = {**session_headers, **headers}
        if content_type is None:
            del in_headers["content-type"]
        in_session = await hc.post(s.mcp, content=body, headers=in_headers)
    for r in (fresh, in_session):
        # HTTP says 415 for a media type the resource does not take; the SDK answers 400.
        assert r.status_code in (400, 415)
    assert_no_echo(fresh, in_session)
    await assert_serving(s)


# --------------------------------------------------------------------------------------------
# Oversize bodies: 413 (declared or streamed), exactly the limit is served


def padded_ping(rid: int, size: int) -> bytes:
    head = json.dumps({"jsonrpc": "2.0", "id": rid, "method": "ping"}).encode()[:-1]
    return head + b" " * (size - len(head) - 1) + b"}"


async def test_body_of_exactly_the_limit_is_served_one_byte_more_gets_413(s: Served) -> None:
    async with raw_session(s) as (hc, headers):
        at_limit = await hc.post(s.mcp, content=padded_ping(11, MAX_BODY_BYTES), headers=headers)
        over = await hc.post(s.mcp, content=padded_ping(12, MAX_BODY_BYTES + 1), headers=headers)
    assert sse_result(at_limit) == {"jsonrpc": "2.0", "id": 11, "result": {}}
    assert over.status_code == 413
    assert error_body(over) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "Request body too large"},
    }


async def test_oversize_bodies_get_413_without_echo(s: Served) -> None:
    big = json.dumps(call_body(4, {**GOOD_ARGS, "credential_value": CANARY * 40_000})).encode()
    assert len(big) > MAX_BODY_BYTES

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield (CANARY.encode() * 600)[: 20 * 1024]

    async def slow_json_chunks() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "'
        for _ in range(70):
            yield b"a" * 16 * 1024
        yield b'"}}'

    responses = []
    async with httpx2.AsyncClient(timeout=30) as hc:
        for path in ("/mcp", "/messages/?session_id=" + uuid.uuid4().hex, "/sse", "/nowhere"):
            responses.append(await hc.post(s.url + path, content=big, headers=JSON_HEADERS))
        responses.append(await hc.post(s.mcp, content=chunks(), headers=JSON_HEADERS))
        responses.append(await hc.post(s.mcp, content=slow_json_chunks(), headers=JSON_HEADERS))
    assert [r.status_code for r in responses] == [413] * 6
    assert responses[4].request.headers["transfer-encoding"] == "chunked"
    assert_no_echo(*responses)
    await assert_serving(s)


async def test_oversize_body_inside_a_session_keeps_the_session(s: Served) -> None:
    async with raw_session(s) as (hc, headers):
        big = await hc.post(s.mcp, content=padded_ping(21, 3 * MAX_BODY_BYTES), headers=headers)
        ping = await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 22, "method": "ping"}, headers=headers)
    assert big.status_code == 413
    assert sse_result(ping) == {"jsonrpc": "2.0", "id": 22, "result": {}}


# --------------------------------------------------------------------------------------------
# Session ids: unknown -> 404, missing -> 400, after DELETE -> 404


UNKNOWN_IDS = [uuid.uuid4().hex, "0", CANARY, "x" * 4096, '../"; %00 ' + CANARY]


@pytest.mark.parametrize("sid", UNKNOWN_IDS, ids=["uuid", "zero", "canary", "long", "odd"])
async def test_unknown_session_id_gets_404(s: Served, sid: str) -> None:
    # Spec (2025-11-25, Session Management): a request with a session id the server does not
    # know gets 404 Not Found.
    headers = {**JSON_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
    async with httpx2.AsyncClient() as hc:
        post = await hc.post(s.mcp, json=call_body(5, GOOD_ARGS), headers=headers)
        notify = await hc.post(
            s.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        get = await hc.get(s.mcp, headers={"accept": "text/event-stream", "mcp-session-id": sid})
        delete = await hc.delete(s.mcp, headers={"mcp-session-id": sid})
    assert [r.status_code for r in (post, notify, get, delete)] == [404] * 4
    assert_no_echo(post, notify, get, delete)
    assert sid not in s.stderr_since_mark() or len(sid) < 4
    await assert_serving(s)


async def test_missing_session_id_gets_400(s: Served) -> None:
    # Spec: a server that requires a session id answers requests without one (other than
    # initialize) with 400 Bad Request.
    async with raw_session(s):  # a session exists, but these requests do not name it
        async with httpx2.AsyncClient() as hc:
            post = await hc.post(s.mcp, json=call_body(6, GOOD_ARGS), headers=JSON_HEADERS)
            ping = await hc.post(
                s.mcp, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=JSON_HEADERS
            )
            get = await hc.get(s.mcp, headers={"accept": "text/event-stream"})
            delete = await hc.delete(s.mcp)
    # GET and DELETE without a session: 405, as 2026-07-28 has neither (and 2025 allows 405 for GET).
    assert [r.status_code for r in (post, ping, get, delete)] == [400, 400, 405, 405]
    assert_no_echo(post, ping, get, delete)
    await assert_serving(s)


async def test_session_ids_on_refused_requests_are_not_usable(s: Served) -> None:
    # The SDK opens a transport for any request without a session id and names it in the answer
    # even when it refuses the request; such a session must not survive the refusal.
    async with httpx2.AsyncClient() as hc:
        refused = await hc.post(
            s.mcp, json={"jsonrpc": "2.0", "id": 6, "method": "ping"}, headers=JSON_HEADERS
        )
        assert refused.status_code == 400
        sid = refused.headers.get("mcp-session-id")
        if sid is not None:
            headers = {**JSON_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": PROTOCOL}
            again = await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 7, "method": "ping"}, headers=headers)
            assert again.status_code == 404


async def test_requests_after_delete_get_404(s: Served) -> None:
    async with raw_session(s) as (hc, headers):
        ok = await hc.post(s.mcp, json=call_body(8, GOOD_ARGS), headers=headers)
        assert sse_result(ok)["result"]["isError"] is False
        deleted = await hc.delete(s.mcp, headers=headers)
        assert deleted.status_code in (200, 204)
        after = [
            await hc.post(s.mcp, json=call_body(9, GOOD_ARGS), headers=headers),
            await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 10, "method": "ping"}, headers=headers),
            await hc.post(
                s.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
            ),
            await hc.get(s.mcp, headers={**headers, "accept": "text/event-stream"}),
            await hc.delete(s.mcp, headers=headers),
        ]
        # A new initialize naming the dead session is refused too; one without it starts afresh.
        reinit = await hc.post(s.mcp, json=INIT, headers=headers)
    assert [r.status_code for r in after] == [404] * 5
    assert reinit.status_code == 404
    assert_no_echo(*after, reinit)
    await assert_serving(s)


# --------------------------------------------------------------------------------------------
# Accept header, methods, paths


async def test_get_without_accept_gets_406_and_post_without_accept_too(s: Served) -> None:
    async with raw_session(s) as (hc, headers):
        get_plain = await hc.get(s.mcp, headers={"mcp-session-id": headers["mcp-session-id"]})
        get_json = await hc.get(
            s.mcp, headers={"mcp-session-id": headers["mcp-session-id"], "accept": "application/json"}
        )
        post_json_only = await hc.post(
            s.mcp, json=call_body(12, GOOD_ARGS), headers={**headers, "accept": "application/json"}
        )
        post_none = await hc.post(s.mcp, json=call_body(13, GOOD_ARGS), headers={**headers, "accept": ""})
        ping = await hc.post(s.mcp, json={"jsonrpc": "2.0", "id": 14, "method": "ping"}, headers=headers)
    # Spec: a GET must accept text/event-stream; a POST must accept both media types.
    assert [r.status_code for r in (get_plain, get_json, post_json_only, post_none)] == [406] * 4
    assert_no_echo(get_plain, get_json, post_json_only, post_none)
    assert sse_result(ping)["result"] == {}


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_other_methods_on_mcp_get_405(s: Served, method: str) -> None:
    async with httpx2.AsyncClient() as hc:
        r = await hc.request(
            method, s.mcp, content=json.dumps(call_body(15, GOOD_ARGS)), headers=JSON_HEADERS
        )
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "DELETE"}
    assert_no_echo(r)


async def test_wrong_methods_and_paths_elsewhere(s: Served) -> None:
    body = json.dumps(call_body(16, GOOD_ARGS))
    async with httpx2.AsyncClient() as hc:
        sse_post = await hc.post(f"{s.url}/sse", content=body, headers=JSON_HEADERS)
        messages_get = await hc.get(f"{s.url}/messages/")
        messages_put = await hc.put(f"{s.url}/messages/?session_id={uuid.uuid4().hex}", content=body)
        nowhere = await hc.post(f"{s.url}/mcp/extra", content=body, headers=JSON_HEADERS)
        root = await hc.get(f"{s.url}/")
    assert [r.status_code for r in (sse_post, messages_get, messages_put, nowhere, root)] == [
        405,
        405,
        405,
        404,
        404,
    ]
    assert_no_echo(sse_post, messages_get, messages_put, nowhere, root)
    await assert_serving(s)


# --------------------------------------------------------------------------------------------
# Legacy /messages/


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?session_id=", 400),
        ("?session_id=not-a-uuid", 400),
        ("?session_id=" + uuid.uuid4().hex, 404),
        ("?session_id=" + str(uuid.uuid4()), 404),
    ],
    ids=["missing", "empty", "garbage", "unknown-hex", "unknown-dashed"],
)
async def test_messages_with_unknown_or_garbage_session_id(s: Served, query: str, status: int) -> None:
    body = json.dumps(call_body(17, GOOD_ARGS))
    async with httpx2.AsyncClient() as hc:
        r = await hc.post(f"{s.url}/messages/{query}", content=body, headers=JSON_HEADERS)
    assert r.status_code == status
    assert_no_echo(r)
    await assert_serving(s)


async def test_messages_garbage_body_in_a_live_sse_session(s: Served) -> None:
    async with httpx2.AsyncClient(timeout=30) as hc, hc.stream("GET", f"{s.url}/sse") as stream:
        lines = stream.aiter_lines()
        endpoint = None
        async for line in lines:
            if line.startswith("data:"):
                endpoint = line[5:].strip()
                break
        assert endpoint is not None and endpoint.startswith("/messages/?session_id=")
        bad = await hc.post(
            s.url + endpoint, content=b'{"credential_value": "' + CANARY.encode(), headers=JSON_HEADERS
        )
        shape = await hc.post(s.url + endpoint, json={"credential_value": CANARY}, headers=JSON_HEADERS)
        # The stream may carry a log notification for the bad message; it must not quote it.
        ping = await hc.post(
            s.url + endpoint, json={"jsonrpc": "2.0", "id": 18, "method": "ping"}, headers=JSON_HEADERS
        )
        assert ping.status_code == 202
        seen: list[str] = []
        async for line in lines:
            if line.startswith("data:"):
                seen.append(line)
                if json.loads(line[5:]).get("id") == 18:
                    break
    assert bad.status_code == 400 and shape.status_code == 400
    assert_no_echo(bad, shape)
    assert CANARY not in "".join(seen)
    await assert_serving(s)


async def test_garbage_session_id_cannot_forge_log_lines(s: Served) -> None:
    forged = "2026-01-01 00:00:00,000 ERROR danube_mcp: forged-by-client"
    async with httpx2.AsyncClient() as hc:
        r = await hc.post(
            f"{s.url}/messages/",
            params={"session_id": "x\n" + forged},
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        )
    assert r.status_code == 400
    assert "forged-by-client" not in s.stderr_since_mark()
