"""Protocol garbage over stdio: a real ``danube-mcp --sandbox`` process fed raw bytes.

Every kind of bad input gets the answer JSON-RPC 2.0 and MCP require where an answer is due (and
none where none is), stdout never carries anything but JSON-RPC, nothing secret reaches stderr
(logging at DEBUG), and the next valid request is answered.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from danube_mcp.transports.stdio import MAX_LINE_BYTES
from procs import RawStdio, child_env, raw_stdio

CANARY = "sk-CANARY-protocol-5f1e2d3c4b5a6978"
API_KEY = "dk-CANARY-protocol-key-0a1b2c3d4e5f"
CANARIES = (CANARY, API_KEY)

PARSE_ERROR = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32700, "message": "Parse error: the line is not valid JSON"},
}
NOT_JSON_RPC = "Invalid Request: not a JSON-RPC 2.0 message"
TOO_LARGE = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32600, "message": "Invalid Request: message too large"},
}


def too_large(rid: Any) -> dict[str, Any]:
    return {**TOO_LARGE, "id": rid}


GOOD_ARGS = {"service_id": "svc_openai_001", "credential_type": "api_key", "credential_value": CANARY}

_ids = itertools.count(1000)


def invalid_request(rid: Any, message: str = NOT_JSON_RPC) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": message}}


BATCH = "Invalid Request: batches are not supported"


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def call(rid: Any, arguments: Any, name: str = "store_credential") -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }


def env() -> dict[str, str]:
    return child_env(DANUBE_MCP_LOG_LEVEL="DEBUG", DANUBE_API_KEY=API_KEY)


def sandbox_args(db_dir: Path) -> tuple[str, ...]:
    return ("--sandbox", "--sandbox-db", str(db_dir / "sb.db"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RawStdio]:
    """One initialized server for the module (start-up costs ~2 s); checked again at the end."""
    with raw_stdio(env(), sandbox_args(tmp_path_factory.mktemp("protocol"))) as raw:
        assert raw.initialize()["result"]["serverInfo"]["name"] == "danube-mcp"
        yield raw
        assert_alive(raw)
        assert raw.close() == 0
    assert_stdout_is_json_rpc(raw)
    assert_stderr_clean(raw)


# --------------------------------------------------------------------------------------------
# Helpers


def assert_json_rpc(msg: Any) -> None:
    """One JSON-RPC 2.0 message as the server may send it: a response, an error or a notification."""
    assert isinstance(msg, dict)
    assert msg.get("jsonrpc") == "2.0"
    if "method" in msg:
        assert isinstance(msg["method"], str)
        assert "result" not in msg and "error" not in msg
        return
    assert "id" in msg
    assert ("result" in msg) != ("error" in msg)
    if "error" in msg:
        assert isinstance(msg["error"]["code"], int) and isinstance(msg["error"]["message"], str)


def assert_stdout_is_json_rpc(raw: RawStdio) -> None:
    for out in list(raw.raw_lines):
        assert out.endswith(b"\n")
        assert_json_rpc(json.loads(out))
        for canary in CANARIES:
            assert canary.encode() not in out


def assert_stderr_clean(raw: RawStdio) -> None:
    err = raw.err.text()
    for canary in CANARIES:
        assert canary not in err
    assert "Traceback" not in err


def exchange(raw: RawStdio, data: bytes, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Send ``data``, then a ping; return everything the server wrote before the ping's answer.

    Input lines are handled in order, so any answer to ``data`` comes before the ping's.
    """
    sync = f"sync-{next(_ids)}"
    raw.send(data + line({"jsonrpc": "2.0", "id": sync, "method": "ping"}))
    before: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = raw.recv(max(0.1, deadline - time.monotonic()))
        assert_json_rpc(msg)
        if msg.get("id") == sync:
            assert msg["result"] == {}
            return before
        before.append(msg)


def assert_alive(raw: RawStdio) -> None:
    """The process is running and answers both a ping and a real tool call."""
    assert raw.proc.poll() is None
    assert exchange(raw, b"") == []
    rid = next(_ids)
    raw.send(line(call(rid, GOOD_ARGS)))
    result = raw.recv_id(rid)["result"]
    assert result["isError"] is False
    assert result["structuredContent"]["service_id"] == "svc_openai_001"


def answers(raw: RawStdio, data: bytes) -> list[dict[str, Any]]:
    """Answers to ``data`` (notifications such as log messages left out), checked for canaries."""
    got = exchange(raw, data)
    dumped = json.dumps(got)
    for canary in CANARIES:
        assert canary not in dumped
    return [m for m in got if "method" not in m]


# --------------------------------------------------------------------------------------------
# Invalid JSON and invalid UTF-8: -32700, id null


INVALID_JSON = [
    b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "' + CANARY.encode(),
    b'{"jsonrpc": "2.0", "id": 7,, "method": "ping"}',
    b"{'jsonrpc': '2.0', 'id': 7, 'method': 'ping', 'x': '" + CANARY.encode() + b"'}",
    b'{"credential_value": ' + CANARY.encode() + b"}",
    CANARY.encode(),
    b"{",
    b"]",
    b'"unterminated',
    b"tru",
    b"\x00\x00\x00",
    b'{"a": 1} {"b": 2}',
    b'{"jsonrpc": "2.0", "id": 7, "method": "ping"} trailing',
]


@pytest.mark.parametrize("data", INVALID_JSON, ids=range(len(INVALID_JSON)))
def test_invalid_json_gets_parse_error_with_null_id(server: RawStdio, data: bytes) -> None:
    assert answers(server, data + b"\n") == [PARSE_ERROR]
    assert_stderr_clean(server)


INVALID_UTF8 = [
    b"\xff\xfe not utf-8",
    b'{"jsonrpc": "2.0", "id": 8, "method": "ping", "params": {"x": "\xc3\x28"}}',
    b'{"jsonrpc": "2.0", "id": 8, "method": "ping", "x": "\xc0\xaf"}',  # overlong encoding
    b'{"jsonrpc": "2.0", "id": 8, "method": "ping", "x": "\xf4\x90\x80\x80"}',  # above U+10FFFF
    b'{"jsonrpc": "2.0", "id": 8, "method": "ping", "x": "\xe2\x82',  # truncated sequence
    b"\x80" * 100,
]


@pytest.mark.parametrize("data", INVALID_UTF8, ids=range(len(INVALID_UTF8)))
def test_invalid_utf8_gets_parse_error_with_null_id(server: RawStdio, data: bytes) -> None:
    assert answers(server, data + b"\n") == [PARSE_ERROR]
    assert_stderr_clean(server)


# Not UTF-8 (RFC 3629 excludes surrogates), but json.loads, the fallback parser in classify_line,
# decodes bytes with "surrogatepass".
ENCODED_SURROGATE = (
    b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "store_credential", '
    b'"arguments": {"credential_value": "' + CANARY.encode() + b'\xed\xa0\x80"}}}\n'
)


def test_utf8_encoded_surrogate_gets_parse_error(server: RawStdio) -> None:
    assert answers(server, ENCODED_SURROGATE) == [PARSE_ERROR]


def test_utf8_encoded_surrogate_gets_a_clean_error(server: RawStdio) -> None:
    got = answers(server, ENCODED_SURROGATE)
    assert len(got) == 1 and "error" in got[0]
    assert got[0]["error"]["code"] in (-32700, -32600)
    assert_stderr_clean(server)


# --------------------------------------------------------------------------------------------
# JSON that is not a JSON-RPC request: -32600, with the id when one can be read


NOT_JSON_RPC_CASES: list[tuple[Any, Any]] = [
    ({"hello": "world", "id": 3}, 3),
    ({"credential_value": CANARY, "id": "abc"}, "abc"),
    ({"jsonrpc": "1.0", "id": 4, "method": "ping"}, 4),
    ({"id": 5, "method": "ping"}, 5),  # no "jsonrpc" member
    ({"jsonrpc": "2.0", "id": 6}, 6),  # neither method nor result
    ({"jsonrpc": "2.0", "id": 7, "method": 5}, 7),
    ({"jsonrpc": "2.0", "id": 8, "method": ["tools/call"]}, 8),
    ({"jsonrpc": "2.0", "id": 9, "method": "ping", "params": CANARY}, 9),  # params not structured
    ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None),  # the example in JSON-RPC 2.0 section 7
    ({}, None),
    (42, None),
    (CANARY, None),
    (None, None),
    (True, None),
]


def test_an_empty_batch_is_an_invalid_request(server: RawStdio) -> None:
    # JSON-RPC 2.0 section 6: an empty batch is an Invalid Request, id null.
    assert answers(server, line([])) == [invalid_request(None, BATCH)]


@pytest.mark.parametrize(("obj", "rid"), NOT_JSON_RPC_CASES, ids=range(len(NOT_JSON_RPC_CASES)))
def test_json_that_is_not_json_rpc_gets_invalid_request(server: RawStdio, obj: Any, rid: Any) -> None:
    assert answers(server, line(obj)) == [invalid_request(rid)]
    assert_stderr_clean(server)


def test_batches_get_one_invalid_request_and_are_not_run(server: RawStdio) -> None:
    # Batching was removed from MCP (2025-06-18); the server refuses any batch as a whole.
    batch = [call(41, GOOD_ARGS), {"jsonrpc": "2.0", "id": 42, "method": "ping"}]
    assert answers(server, line(batch)) == [invalid_request(None, BATCH)]
    notes = [{"jsonrpc": "2.0", "method": "notifications/initialized"}] * 3
    assert answers(server, line(notes)) == [invalid_request(None, BATCH)]
    assert answers(server, line([1, 2, 3])) == [invalid_request(None, BATCH)]
    assert_stderr_clean(server)


# --------------------------------------------------------------------------------------------
# Unknown methods: -32601 with the request's id; notifications get nothing


@pytest.mark.parametrize(
    ("rid", "method"),
    [
        (11, "no/such/method"),
        ("str-id", "tools/" + CANARY),
        (0, ""),
        (-5, "sampling/createMessage"),  # a server-to-client method
        (2**62, "resources/unknown"),
    ],
)
def test_unknown_method_gets_method_not_found_with_its_id(server: RawStdio, rid: Any, method: str) -> None:
    request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": {"x": CANARY}}
    assert answers(server, line(request)) == [
        {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
    ]
    assert_stderr_clean(server)


def test_unknown_or_malformed_notifications_get_no_answer(server: RawStdio) -> None:
    for note in (
        {"jsonrpc": "2.0", "method": "no/such/notification", "params": {"x": CANARY}},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": [CANARY]},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 424242}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": CANARY}},
    ):
        assert answers(server, line(note)) == []
    assert_stderr_clean(server)


# --------------------------------------------------------------------------------------------
# Wrong params shape: -32602


@pytest.mark.parametrize(
    "params",
    [
        {"name": "store_credential", "arguments": CANARY},
        {"name": "store_credential", "arguments": [CANARY]},
        {"name": "store_credential", "arguments": 5},
        {"name": 5, "arguments": GOOD_ARGS},
        {"arguments": GOOD_ARGS},
        None,
    ],
    ids=["arguments-string", "arguments-array", "arguments-number", "name-number", "no-name", "no-params"],
)
def test_wrong_params_shape_gets_invalid_params(server: RawStdio, params: Any) -> None:
    rid = next(_ids)
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": "tools/call"}
    if params is not None:
        request["params"] = params
    got = answers(server, line(request))
    assert len(got) == 1 and got[0]["id"] == rid
    assert got[0]["error"]["code"] == -32602
    assert_stderr_clean(server)


@pytest.mark.parametrize("method", ["tools/call", "ping"])
def test_params_array_gets_invalid_params(server: RawStdio, method: str) -> None:
    # JSON-RPC 2.0 section 4.2: params may be an Array or an Object, so this is a valid Request
    # object whose params MCP cannot take: Invalid params (-32602), not Invalid Request.
    rid = next(_ids)
    got = answers(server, line({"jsonrpc": "2.0", "id": rid, "method": method, "params": [CANARY]}))
    assert len(got) == 1 and got[0]["id"] == rid
    assert got[0]["error"]["code"] == -32602


# --------------------------------------------------------------------------------------------
# Ids: null, non-scalar ids


@pytest.mark.parametrize(
    "rid", [None, True, 1.5, {"nested": CANARY}, [1]], ids=["null", "true", "float", "object", "array"]
)
def test_request_with_invalid_id_gets_invalid_request(server: RawStdio, rid: Any) -> None:
    # MCP: "the ID MUST NOT be null" (ids are strings or integers). JSON-RPC 2.0 section 4.1: only
    # a message *without* an id member is a notification, so this one is due an answer.
    request = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "store_credential"}}
    assert answers(server, line(request)) == [
        invalid_request(None, "Invalid Request: id must be a string or an integer")
    ]


def test_request_with_invalid_id_is_not_run(server: RawStdio) -> None:
    """Whatever the answer, a request with an unusable id must not reach the tool."""
    for rid in (None, True, 1.5, {"a": 1}, [1]):
        args = {**GOOD_ARGS, "service_id": "svc_github_001"}
        got = answers(server, line(call(rid, args)))
        assert all("error" in m and m["id"] is None for m in got)
    assert_alive(server)
    assert "svc_github_001" not in server.err.text()  # the sandbox logs every store at INFO
    assert_stderr_clean(server)


def test_string_and_large_integer_ids_are_echoed_exactly(server: RawStdio) -> None:
    for rid in ("", "x" * 1000, "ünï-çødé", 2**53 + 1, -1):
        got = answers(server, line({"jsonrpc": "2.0", "id": rid, "method": "ping"}))
        assert got == [{"jsonrpc": "2.0", "id": rid, "result": {}}]


# --------------------------------------------------------------------------------------------
# Responses the server never asked for


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 999, "result": {"credential_value": CANARY}},
        {"jsonrpc": "2.0", "id": "nope", "error": {"code": -1, "message": CANARY}},
    ],
    ids=["result", "error"],
)
def test_response_with_unknown_id_is_not_answered(server: RawStdio, message: dict[str, Any]) -> None:
    # A response is never answered (JSON-RPC 2.0 section 5): nothing at all comes back, not even a
    # notification, and nothing quotes the stray message.
    assert exchange(server, line(message)) == []
    assert_stderr_clean(server)


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": CANARY}},
        {"jsonrpc": "2.0", "id": None, "result": {"x": CANARY}},
    ],
    ids=["error", "result"],
)
def test_response_with_null_id_is_not_answered(server: RawStdio, message: dict[str, Any]) -> None:
    assert answers(server, line(message)) == []


def test_response_with_null_id_gets_at_most_a_clean_error(server: RawStdio) -> None:
    message = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": CANARY}}
    got = answers(server, line(message))
    assert got in ([], [invalid_request(None)])
    assert_stderr_clean(server)


# --------------------------------------------------------------------------------------------
# Size limit: 4 MiB per line


def padded_ping(rid: int, size: int, filler: bytes = b" ") -> bytes:
    """A ping request exactly ``size`` bytes long (without the newline)."""
    head = json.dumps({"jsonrpc": "2.0", "id": rid, "method": "ping"}).encode()[:-1]
    assert len(filler) == 1
    return head + filler * (size - len(head) - 1) + b"}"


def test_line_of_exactly_the_limit_is_served_one_byte_more_is_refused(server: RawStdio) -> None:
    at_limit = padded_ping(61, MAX_LINE_BYTES)
    assert len(at_limit) == MAX_LINE_BYTES
    assert answers(server, at_limit + b"\n") == [{"jsonrpc": "2.0", "id": 61, "result": {}}]
    over = padded_ping(62, MAX_LINE_BYTES + 1)
    assert answers(server, over + b"\n") == [too_large(62)]


def test_ten_megabyte_line_gets_one_invalid_request_and_the_next_line_is_served(server: RawStdio) -> None:
    value = (CANARY * (10 * 1024 * 1024 // len(CANARY) + 1))[: 10 * 1024 * 1024]
    huge = line(call(71, {**GOOD_ARGS, "credential_value": value}))
    assert len(huge) > 10 * 1024 * 1024
    started = time.monotonic()
    assert answers(server, huge) == [too_large(71)]
    # A huge line of junk, without JSON at all, is refused the same way.
    assert answers(server, b"\x00\xff" * (5 * 1024 * 1024 + 7) + b"\n") == [TOO_LARGE]
    assert time.monotonic() - started < 30  # a deadline, not a performance figure
    rid = next(_ids)
    server.send(line(call(rid, GOOD_ARGS)))
    assert server.recv_id(rid)["result"]["isError"] is False
    assert_stderr_clean(server)


def test_long_line_under_the_limit_gets_a_tool_error(server: RawStdio) -> None:
    rid = next(_ids)
    server.send(line(call(rid, {**GOOD_ARGS, "credential_value": "k" + CANARY * 60000})))
    result = server.recv_id(rid)["result"]
    assert result["isError"] is True
    assert "credential_value: must be at most" in result["content"][0]["text"]
    assert CANARY not in json.dumps(result)


# --------------------------------------------------------------------------------------------
# Bursts


def test_burst_of_a_thousand_notifications_then_requests_are_answered_promptly(server: RawStdio) -> None:
    kinds = [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 123456}},
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        {
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": {"progressToken": "t", "progress": 1},
        },
        {"jsonrpc": "2.0", "method": "notifications/" + CANARY, "params": {"v": CANARY}},
    ]
    burst = b"".join(line(kinds[i % len(kinds)]) for i in range(1000))
    before = len(server.raw_lines)
    started = time.monotonic()
    assert answers(server, burst) == []
    rid = next(_ids)
    server.send(line(call(rid, GOOD_ARGS)))
    assert server.recv_id(rid, timeout=20)["result"]["isError"] is False
    assert time.monotonic() - started < 20  # a deadline for "promptly", not a performance figure
    # Exactly two lines were written: the sync ping's answer and the tool call's.
    assert len(server.raw_lines) - before == 2
    assert_stderr_clean(server)


def test_burst_of_garbage_lines_gets_one_answer_each(server: RawStdio) -> None:
    garbage = [b"{", b'{"id": 1}', b"\xff", line({"jsonrpc": "2.0", "id": 1, "method": "x"})[:-1]]
    data = b"\n".join(garbage[i % len(garbage)] for i in range(400)) + b"\n"
    got = answers(server, data)
    assert len(got) == 400
    assert [m["error"]["code"] for m in got[:4]] == [-32700, -32600, -32700, -32601]


def test_blank_and_crlf_lines(server: RawStdio) -> None:
    assert answers(server, b"\n   \n\t\n") == []
    got = answers(server, b'{"jsonrpc": "2.0", "id": 81, "method": "ping"}\r\n')
    assert got == [{"jsonrpc": "2.0", "id": 81, "result": {}}]


# --------------------------------------------------------------------------------------------
# Odd but well-formed content


def test_control_characters_and_nul_in_arguments_get_a_tool_error(server: RawStdio) -> None:
    for value in (CANARY + "\u0000", "\u001b[31m" + CANARY, CANARY + "\rx", CANARY + "\u0085x"):
        rid = next(_ids)
        server.send(line(call(rid, {**GOOD_ARGS, "credential_value": value})))
        result = server.recv_id(rid)["result"]
        assert result["isError"] is True
        text = result["content"][0]["text"]
        assert "Invalid arguments: credential_value" in text or "Danube" in text, text
        assert CANARY not in text
    assert_stderr_clean(server)


def test_lone_surrogate_escape_gets_the_tools_own_error(server: RawStdio) -> None:
    # RFC 8259 section 7 lets a string hold any \uXXXX escape, so this is valid JSON and a valid
    # request; over HTTP the same call gets the tool's "invalid Unicode" error.
    rid = next(_ids)
    data = json.dumps(call(rid, {**GOOD_ARGS, "credential_value": CANARY + "\ud800"})).encode() + b"\n"
    assert b"\\ud800" in data
    got = answers(server, data)
    assert len(got) == 1 and got[0]["id"] == rid
    assert "result" in got[0], got[0]
    result = got[0]["result"]
    assert result["isError"] is True
    assert "Invalid arguments: credential_value" in result["content"][0]["text"]


def test_lone_surrogate_escape_gets_a_clean_answer(server: RawStdio) -> None:
    """Whatever the code, the answer carries the id, quotes nothing and the request is not run."""
    rid = next(_ids)
    data = line(call(rid, {**GOOD_ARGS, "credential_value": CANARY + "\udfff"}))
    got = answers(server, data)
    assert len(got) == 1 and got[0]["id"] == rid
    assert got[0].get("result", {}).get("isError", True) is True
    assert_stderr_clean(server)


def test_moderately_deep_json_gets_an_answer(server: RawStdio) -> None:
    shallow = {"x": CANARY}
    for _ in range(40):  # 80 levels: within what the SDK parser takes
        shallow = {"x": [shallow]}
    rid = next(_ids)
    server.send(line(call(rid, {**GOOD_ARGS, "extra": shallow})))
    result = server.recv_id(rid)["result"]
    assert result["isError"] is True and "unexpected argument(s): 'extra'" in result["content"][0]["text"]
    deep = b"[" * 500 + b"]" * 500  # beyond the SDK parser (200 levels), within json.loads
    rid = next(_ids)
    request = b'{"jsonrpc": "2.0", "id": %d, "method": "ping", "params": {"x": %s}}\n' % (rid, deep)
    got = answers(server, request)
    assert len(got) == 1 and got[0]["id"] == rid
    assert_stderr_clean(server)


def test_initialize_again_and_duplicate_keys(server: RawStdio) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 91,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "x", "version": "1"},
        },
    }
    got = answers(server, line(init))
    assert len(got) == 1 and got[0]["id"] == 91
    got = answers(server, b'{"jsonrpc": "2.0", "id": 92, "id": 93, "method": "ping"}\n')
    assert len(got) == 1 and got[0]["id"] in (92, 93)


# --------------------------------------------------------------------------------------------
# Separate processes: before initialize, and input that may end the process


def test_requests_before_initialize_are_answered_and_the_server_survives(tmp_path: Path) -> None:
    with raw_stdio(env(), sandbox_args(tmp_path)) as raw:
        raw.send(line(call(1, GOOD_ARGS)))
        early = raw.recv_id(1)
        assert_json_rpc(early)
        # The SDK refuses the call (it is not run), but answers it.
        assert "error" in early or early["result"]["isError"] is True
        raw.send(line({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        assert raw.recv_id(2) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        raw.send(line({"jsonrpc": "2.0", "method": "notifications/" + CANARY}))
        assert raw.initialize()["result"]["serverInfo"]["name"] == "danube-mcp"
        assert_alive(raw)
        code = raw.close()
    assert code == 0
    assert_stdout_is_json_rpc(raw)
    assert_stderr_clean(raw)


def test_stdin_closing_mid_line_exits_cleanly(tmp_path: Path) -> None:
    with raw_stdio(env(), sandbox_args(tmp_path)) as raw:
        raw.initialize()
        partial = b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"arguments": "'
        raw.send(partial + CANARY.encode())
        code = raw.close()
    assert code == 0
    assert_stdout_is_json_rpc(raw)
    assert_stderr_clean(raw)


DEEP = 100_000


@pytest.mark.parametrize(
    "data",
    [
        b"[" * DEEP + b"]" * DEEP,
        b'{"jsonrpc": "2.0", "id": 5, "method": "ping", "params": {"x": ' + b"[" * DEEP + b"]" * DEEP + b"}}",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
    ids=["bare-array", "inside-a-request", "objects-5000"],
)
def test_very_deep_json_gets_an_error_and_the_server_survives(tmp_path: Path, data: bytes) -> None:
    with raw_stdio(env(), sandbox_args(tmp_path)) as raw:
        raw.initialize()
        raw.send(data + b"\n")
        got = raw.recv(timeout=15)
        assert "error" in got and got["error"]["code"] in (-32700, -32600)
        assert_alive(raw)
    assert_stderr_clean(raw)
