"""The stdio fast start answers exactly what the SDK answers, or leaves the line to the SDK.

In process: the snapshot is recorded from the real server, then many message sequences go both
through :class:`FastResponder` and through the SDK's own server (``Server.run`` over the stdio
transport's parser); every answer the fast start gives must equal the SDK's, parsed as JSON. The
replay the fast start hands over must leave the SDK answering the same, under its private ids.
Then real processes: the SDK held back by a FIFO, so the handshake can only come from the fast
start; a planted or tampered cache.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from danube_mcp.danube.client import DanubeClient
from danube_mcp.secure_input import SecureInputBroker
from danube_mcp.stdio_start import TEST_HOLD_ENV
from danube_mcp.tool.handler import build_server
from danube_mcp.transports import fast_start
from danube_mcp.transports.fast_snapshot import exchange, record
from danube_mcp.transports.fast_start import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    PROTOCOL_VERSION_KEY,
    FastResponder,
)
from procs import REPO, child_env, raw_stdio
from upstream import FakeUpstream

HANDSHAKE = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
MODERN = ["2026-07-28"]
NOT_SUPPORTED = ["2099-01-01", "1999-12-31", "", "2025-11-25 ", "latest", "x" * 60]

CAPABILITIES: list[Any] = [
    {},
    {"roots": {"listChanged": True}},
    {"roots": {}},
    {"sampling": {}},
    {"sampling": {"context": {}, "tools": {}}},
    {"elicitation": {"form": {}, "url": {}}},
    {"elicitation": {}},
    {"experimental": {"x": {"a": [1, 2.5, None, "s"]}}},
    {"extensions": {"io.example/ext": {}}},
    {"roots": {"listChanged": False}, "sampling": {}, "elicitation": {"url": {}}},
    # Shapes the fast start leaves to the SDK (some valid, some not):
    {"roots": {"listChanged": "yes"}},
    {"roots": {"listChanged": 1}},
    {"tasks": {}},
    {"elicitation": {"form": {"extra": 1}}},
    {"unknown": {}},
    [],
    None,
    "caps",
]
CLIENT_INFO: list[Any] = [
    {"name": "c", "version": "1"},
    {"name": "c", "version": "1", "title": "C"},
    {"name": "ünïcode ✓", "version": ""},
    {"name": "c"},
    {"name": 5, "version": "1"},
    {"name": "c", "version": "1", "websiteUrl": "https://example.com"},
    None,
    [],
]
IDS: list[Any] = [0, 1, -7, "abc", "", "id with spaces", 2**40, 2**60, True, 1.5, None, [1], {"a": 1}]


def msg(rid: Any, method: str, params: Any = "absent") -> dict[str, Any]:
    m: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params != "absent":
        m["params"] = params
    return m


def init(version: Any, caps: Any = None, info: Any = None, rid: Any = 1) -> dict[str, Any]:
    return msg(
        rid,
        "initialize",
        {
            "protocolVersion": version,
            "capabilities": {} if caps is None else caps,
            "clientInfo": {"name": "t", "version": "0"} if info is None else info,
        },
    )


INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def meta(version: Any, caps: Any = "default", info: Any = "default", **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {PROTOCOL_VERSION_KEY: version, **extra}
    if caps != "absent":
        m[CLIENT_CAPABILITIES_KEY] = {} if caps == "default" else caps
    if info != "absent":
        m[CLIENT_INFO_KEY] = {"name": "t", "version": "0"} if info == "default" else info
    return {"_meta": m}


def encode(m: Any) -> bytes:
    return m if isinstance(m, bytes) else json.dumps(m).encode()


def scenarios() -> Iterator[tuple[str, list[Any]]]:
    # initialize era: every version, supported or not, and what follows the handshake
    for v in [*HANDSHAKE, *MODERN, *NOT_SUPPORTED, 20250618, None]:
        yield (
            f"legacy {v!r}",
            [
                init(v),
                INITIALIZED,
                msg(2, "tools/list"),
                msg(3, "ping"),
                msg(4, "tools/list", {}),
                msg(5, "ping", {}),
            ],
        )
        yield f"legacy {v!r}, no initialized", [init(v), msg(2, "tools/list"), msg(3, "ping")]
    for n, caps in enumerate(CAPABILITIES):
        yield f"legacy caps {n}", [init("2025-06-18", caps=caps), INITIALIZED, msg(2, "tools/list")]
    for n, info in enumerate(CLIENT_INFO):
        yield f"legacy clientInfo {n}", [init("2025-11-25", info=info), INITIALIZED, msg(2, "tools/list")]
    for rid in IDS:
        yield f"legacy id {rid!r}", [init("2025-06-18", rid=rid), INITIALIZED, msg(rid, "tools/list")]
    yield "ping first", [msg(1, "ping"), init("2025-06-18", rid=2), INITIALIZED, msg(3, "tools/list")]
    yield "tools/list first", [msg(1, "tools/list"), init("2025-06-18", rid=2), msg(3, "tools/list")]
    yield "initialized first", [INITIALIZED, msg(1, "tools/list"), init("2025-06-18", rid=2)]
    yield "initialize twice", [init("2025-06-18"), init("2024-11-05", rid=2), msg(3, "tools/list")]
    yield "initialize, no params", [msg(1, "initialize"), msg(2, "ping")]
    yield "initialize, extra param", [msg(1, "initialize", {**init("2025-06-18")["params"], "x": 1})]
    yield (
        "initialize with _meta",
        [msg(1, "initialize", {**init("2025-06-18")["params"], **meta("2026-07-28")})],
    )
    yield (
        "initialize with progress token",
        [msg(1, "initialize", {**init("2025-06-18")["params"], "_meta": {"progressToken": 1}})],
    )
    yield "legacy then modern", [init("2025-06-18"), INITIALIZED, msg(2, "tools/list", meta("2026-07-28"))]
    yield "legacy tools/list cursor", [init("2025-06-18"), INITIALIZED, msg(2, "tools/list", {"cursor": "x"})]
    yield "legacy unknown method", [init("2025-06-18"), INITIALIZED, msg(2, "no/such"), msg(3, "tools/list")]
    yield (
        "legacy tools/call",
        [init("2025-06-18"), INITIALIZED, msg(2, "tools/call", {"name": "x"}), msg(3, "ping")],
    )
    # 2026-07-28 era: each method at every version, the envelope's fields present, missing or wrong
    for method in ("server/discover", "tools/list", "ping"):
        for v in [*MODERN, *HANDSHAKE, *NOT_SUPPORTED]:
            yield f"modern {method} {v!r}", [msg(1, method, meta(v)), msg(2, method, meta(v))]
        yield f"modern {method} no clientInfo", [msg(1, method, meta("2026-07-28", info="absent"))]
        yield f"modern {method} no capabilities", [msg(1, method, meta("2026-07-28", caps="absent"))]
        yield f"modern {method} bad version, no caps", [msg(1, method, meta("2099-01-01", caps="absent"))]
        yield f"modern {method} version null", [msg(1, method, meta(None))]
        yield f"modern {method} version number", [msg(1, method, meta(20260728))]
        yield f"modern {method} extra meta", [msg(1, method, meta("2026-07-28", progressToken=3))]
        yield f"modern {method} extra param", [msg(1, method, {**meta("2026-07-28"), "cursor": "c"})]
        yield f"modern {method} meta not object", [msg(1, method, {"_meta": [PROTOCOL_VERSION_KEY]})]
        for n, caps in enumerate(CAPABILITIES):
            yield f"modern {method} caps {n}", [msg(1, method, meta("2026-07-28", caps=caps))]
            yield f"modern {method} caps {n}, bad version", [msg(1, method, meta("2099-01-01", caps=caps))]
        for n, info in enumerate(CLIENT_INFO):
            yield f"modern {method} clientInfo {n}", [msg(1, method, meta("2026-07-28", info=info))]
    for rid in IDS:
        yield f"modern id {rid!r}", [msg(rid, "server/discover", meta("2026-07-28"))]
    yield (
        "modern then more",
        [
            msg(1, "server/discover", meta("2026-07-28")),
            msg(2, "tools/list", meta("2099-01-01")),
            msg(3, "initialize", {**init("2025-06-18")["params"]}),
            msg(4, "tools/list", meta("2026-07-28")),
        ],
    )
    yield "modern then legacy request", [msg(1, "tools/list", meta("2026-07-28")), msg(2, "tools/list")]
    yield (
        "modern notification",
        [msg(1, "tools/list", meta("2026-07-28")), INITIALIZED, msg(2, "ping", meta("2026-07-28"))],
    )
    # JSON-RPC envelopes and raw lines
    good = init("2025-06-18")
    yield "jsonrpc 1.0", [{**good, "jsonrpc": "1.0"}]
    yield "no jsonrpc", [{k: v for k, v in good.items() if k != "jsonrpc"}]
    yield "extra top-level", [{**good, "extra": 1}]
    yield "params list", [msg(1, "ping", [])]
    yield "params null", [msg(1, "ping", None)]
    yield "repeated key", [b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}']
    yield "NaN id", [b'{"jsonrpc": "2.0", "id": NaN, "method": "ping"}']
    yield "lone surrogate", [b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "ping"}']
    yield "not json", [b"{", msg(1, "ping")]
    yield "blank line", [b"   ", msg(1, "ping")]
    yield "batch", [b"[" + encode(good) + b"]"]


OPTION_SETS = [
    {"secure_input": False, "sandbox": False, "api_key_problem": None},
    {"secure_input": True, "sandbox": False, "api_key_problem": "not set"},
    {"secure_input": False, "sandbox": True, "api_key_problem": None},
]


@pytest.fixture(params=OPTION_SETS, ids=["plain", "secure-input", "sandbox"])
async def server_and_snapshot(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    opts = request.param
    client = DanubeClient(base_url="http://127.0.0.1:9", api_key="dk-test")
    server, _ = build_server(
        client,
        sandbox=opts["sandbox"],
        api_key_problem=opts["api_key_problem"],
        secure_input=SecureInputBroker() if opts["secure_input"] else None,
    )
    snapshot = await record(server)
    yield server, snapshot
    await client.aclose()


def fast_answers(snapshot: dict[str, Any], lines: list[bytes]) -> tuple[FastResponder, list[Any]]:
    """What the fast start answers per line: a parsed answer, "none" (read, no answer due) or
    "sdk" (left to the SDK, with every line after it)."""
    responder = FastResponder(snapshot)
    out: list[Any] = []
    for line in lines:
        before = responder.handing_over
        answer = responder.feed(line)
        if responder.handing_over:
            assert answer is None
            out.append("sdk")
        else:
            assert not before
            out.append(json.loads(answer) if answer is not None else "none")
    return responder, out


@pytest.mark.anyio
async def test_fast_answers_equal_the_sdks(server_and_snapshot: tuple[Any, dict[str, Any]]) -> None:
    server, snapshot = server_and_snapshot
    answered_by_fast = 0
    names = set()
    for name, messages in scenarios():
        names.add(name)
        lines = [encode(m) for m in messages]
        responder, fast = fast_answers(snapshot, lines)
        sdk = await exchange(server, lines)
        for n, (f, s) in enumerate(zip(fast, sdk, strict=True)):
            if f == "sdk":
                break
            expected = s if s is not None else "none"
            assert f == expected, f"{name}: line {n}"
            answered_by_fast += f != "none"
        # The replay the SDK gets: its answers under the private ids are the ones already sent,
        # and every line the fast start did not answer gets the answer the SDK gives directly.
        replayed = await exchange(server, responder.replay)
        expected_private = dict(responder.expected)
        for n, answer in enumerate(replayed):
            if answer is not None and answer.get("id") in expected_private:
                sent = expected_private.pop(answer["id"])
                assert {**answer, "id": sent["id"]} == sent, f"{name}: replayed line {n}"
            else:
                assert answer == sdk[n], f"{name}: replayed line {n}"
        assert not expected_private, name
    assert len(names) > 250
    assert answered_by_fast > 200  # the comparison is not vacuous


@pytest.mark.anyio
async def test_the_common_handshakes_are_answered_fast(
    server_and_snapshot: tuple[Any, dict[str, Any]],
) -> None:
    """What real clients send first (SDK 2.x in each mode, older SDKs, the bench client) never
    waits for the SDK."""
    _, snapshot = server_and_snapshot
    common = {
        "legacy": [init(v, caps={"roots": {"listChanged": True}}) for v in HANDSHAKE],
        "modern": [msg(1, "server/discover", meta("2026-07-28"))],
    }
    for era, firsts in common.items():
        for first in firsts:
            then = (
                [INITIALIZED, msg(2, "tools/list"), msg(3, "ping")]
                if era == "legacy"
                else [msg(2, "tools/list", meta("2026-07-28")), msg(3, "tools/list", meta("2099-01-01"))]
            )
            _, fast = fast_answers(snapshot, [encode(m) for m in [first, *then]])
            assert "sdk" not in fast, first
            if era == "modern":
                assert fast[-1]["error"]["code"] == -32022
                assert fast[-1]["error"]["data"] == {"supported": MODERN, "requested": "2099-01-01"}


# --------------------------------------------------------------------------------------------
# The cache


def test_cache_is_refused_unless_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DANUBE_MCP_CACHE_DIR", str(tmp_path / "cache"))
    key = fast_start.cache_key({"x": 1})
    assert key is not None
    snapshot = {"format": fast_start.SNAPSHOT_FORMAT, "planted": False}
    fast_start.save_snapshot(key, snapshot)
    path = fast_start.cache_path(key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert fast_start.load_snapshot(key) == snapshot
    assert fast_start.load_snapshot(key + "other") is None  # another install or other options
    path.chmod(0o620)
    assert fast_start.load_snapshot(key) is None  # writable by the group: could be planted
    path.chmod(0o600)
    path.parent.chmod(0o770)
    assert fast_start.load_snapshot(key) is None
    path.parent.chmod(0o700)
    target = tmp_path / "elsewhere.json"
    path.rename(target)
    path.symlink_to(target)
    assert fast_start.load_snapshot(key) is None  # a symlink is not followed
    path.unlink()
    assert fast_start.load_snapshot(key) is None


def test_cache_key_follows_the_source(tmp_path: Path) -> None:
    key = fast_start.cache_key({"secure_input": False})
    assert key is not None
    assert key == fast_start.cache_key({"secure_input": False})
    assert key != fast_start.cache_key({"secure_input": True})
    assert "handler.py" in key and "mcp-" in key and "pydantic-" in key


# --------------------------------------------------------------------------------------------
# Real processes


def hold_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], Path]:
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    cache = tmp_path / "cache"
    return child_env(DANUBE_MCP_CACHE_DIR=str(cache), DANUBE_API_KEY="dk-fast-0123", **extra), fifo


def warm_cache(env: dict[str, str], args: tuple[str, ...] = ()) -> None:
    """One ordinary start records the snapshot into the cache."""
    plain = {k: v for k, v in env.items() if k != TEST_HOLD_ENV}
    with raw_stdio(plain, args) as raw:
        raw.initialize()
        assert raw.close() == 0
    assert list(Path(env["DANUBE_MCP_CACHE_DIR"]).glob("stdio-answers-*.json"))


def release(fifo: Path) -> threading.Thread:
    def open_and_write() -> None:
        with open(fifo, "wb") as f:
            f.write(b"x")

    t = threading.Thread(target=open_and_write, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_handshake_is_answered_before_the_sdk_loads(
    tmp_path: Path, upstream: FakeUpstream, mode: str
) -> None:
    env, fifo = hold_env(tmp_path, DANUBE_API_URL=upstream.url)
    warm_cache(env)
    env[TEST_HOLD_ENV] = str(fifo)
    args = {"service_id": "svc_1", "credential_type": "api_key", "credential_value": "sk-fast-canary-77"}
    with raw_stdio(env) as raw:
        if mode == "legacy":
            answer = raw.initialize()
            assert answer["result"]["serverInfo"]["name"] == "danube-mcp"
            raw.send(msg(2, "tools/list"))
            call = msg(3, "tools/call", {"name": "store_credential", "arguments": args})
        else:
            m = meta("2026-07-28")
            raw.send(msg(1, "server/discover", m))
            assert raw.recv_id(1)["result"]["supportedVersions"] == MODERN
            raw.send(msg(2, "tools/list", m))
            call = msg(3, "tools/call", {"name": "store_credential", "arguments": args, **m})
        # The SDK is held back, yet the handshake is answered: by the fast start.
        assert [t["name"] for t in raw.recv_id(2)["result"]["tools"]] == ["store_credential"]
        raw.send(call)
        assert upstream.requests == []
        release(fifo)
        result = raw.recv_id(3)["result"]
        assert result["isError"] is False
        assert raw.close() == 0
    assert len(upstream.requests) == 1
    out = [json.loads(line) for line in raw.raw_lines]
    # Every request answered once: the SDK's answers to the replayed handshake were dropped.
    assert sorted(m["id"] for m in out) == ([0, 2, 3] if mode == "legacy" else [1, 2, 3])
    err = raw.err.text()
    assert "fast start" not in err and "Traceback" not in err
    assert "sk-fast-canary-77" not in err


def test_eof_after_the_handshake_exits_without_waiting_for_the_sdk(tmp_path: Path) -> None:
    env, fifo = hold_env(tmp_path)
    warm_cache(env)
    env[TEST_HOLD_ENV] = str(fifo)  # never released: the process must not wait for it
    lines = b"".join(
        encode(m) + b"\n" for m in [init("2025-11-25"), INITIALIZED, msg(2, "tools/list"), msg(3, "ping")]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "danube_mcp"],
        input=lines,
        capture_output=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
    )
    assert proc.returncode == 0
    assert [json.loads(line)["id"] for line in proc.stdout.splitlines()] == [1, 2, 3]


def test_a_tampered_cache_is_detected_and_discarded(tmp_path: Path) -> None:
    env, _ = hold_env(tmp_path)
    warm_cache(env)
    (path,) = Path(env["DANUBE_MCP_CACHE_DIR"]).glob("stdio-answers-*.json")
    data = json.loads(path.read_text())
    tools = data["snapshot"]["legacy"]["2025-06-18"]["tools/list"]["result"]["tools"]
    tools[0]["description"] = "TAMPERED"
    path.write_text(json.dumps(data))
    with raw_stdio(env) as raw:
        raw.initialize()
        raw.send(msg(2, "tools/list"))
        raw.recv_id(2)  # the fast start trusts its cache: the SDK's check comes after
        # A request only the SDK answers: the replay (and its check) happens before it.
        raw.send(msg(3, "tools/call", {"name": "no_such_tool", "arguments": {}}))
        assert raw.recv_id(3)["result"]["isError"] is True
        assert raw.close() == 0
    assert "differs from the SDK's own" in raw.err.text()
    assert not path.exists()  # the next start records a fresh snapshot
    with raw_stdio(env) as raw:
        raw.initialize()
        raw.send(msg(2, "tools/list"))
        assert raw.recv_id(2)["result"]["tools"][0]["description"] != "TAMPERED"
        assert raw.close() == 0


def test_fast_start_can_be_turned_off(tmp_path: Path) -> None:
    env, _ = hold_env(tmp_path, DANUBE_MCP_FAST_START="0")
    with raw_stdio(env) as raw:
        raw.initialize()
        assert raw.close() == 0
    assert not Path(env["DANUBE_MCP_CACHE_DIR"]).exists()
    env["DANUBE_MCP_FAST_START"] = "maybe"
    proc = subprocess.run(
        [sys.executable, "-m", "danube_mcp"],
        input=b"",
        capture_output=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines() == [
        "danube-mcp: DANUBE_MCP_FAST_START must be 1/true/yes/on or 0/false/no/off"
    ]


def test_a_snapshot_of_the_wrong_shape_hands_everything_to_the_sdk() -> None:
    responder = FastResponder(
        {"format": fast_start.SNAPSHOT_FORMAT, "legacy": [], "handshake_versions": None}
    )
    line = encode(init("2025-06-18"))
    assert responder.feed(line) is None
    assert responder.handing_over and responder.replay == [line]


def test_a_line_split_across_the_handover_is_read_whole(tmp_path: Path, upstream: FakeUpstream) -> None:
    env, fifo = hold_env(tmp_path, DANUBE_API_URL=upstream.url)
    warm_cache(env)
    env[TEST_HOLD_ENV] = str(fifo)
    args = {"service_id": "svc_1", "credential_type": "api_key", "credential_value": "sk-fast-canary-78"}
    call = encode(msg(5, "tools/call", {"name": "store_credential", "arguments": args})) + b"\n"
    with raw_stdio(env) as raw:
        raw.initialize()
        raw.send(call[:40])  # read by the fast start (or still in the pipe: either way, whole later)
        release(fifo)
        raw.send(call[40:])
        assert raw.recv_id(5)["result"]["isError"] is False
        assert raw.close() == 0
    assert len(upstream.requests) == 1
