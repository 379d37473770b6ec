"""Record the snapshot the fast start answers from: the SDK's own answers, for this server.

Each exchange runs the real server (``Server.run``, the SDK's dual-era loop) over in-memory streams,
with the lines parsed by the stdio transport's own parser, so the recorded answers are what the
server would write to stdout for the same lines.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from danube_mcp.transports.fast_start import (
    CLIENT_CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    PROTOCOL_VERSION_KEY,
    SENTINEL_VERSION,
    SNAPSHOT_FORMAT,
)
from danube_mcp.transports.stdio import _unknown_method, classify_line

EXCHANGE_TIMEOUT = 10.0


def wire(message: types.JSONRPCMessage) -> dict[str, Any]:
    """A message as the stdio transport writes it, parsed back."""
    parsed: dict[str, Any] = json.loads(message.model_dump_json(by_alias=True, exclude_unset=True))
    return parsed


async def exchange(server: Server[Any], lines: list[bytes]) -> list[dict[str, Any] | None]:
    """Send ``lines`` to a fresh connection of ``server`` one at a time; for each, the answer it got
    (None for a line that was not answered, such as a notification)."""
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)
    answers: list[dict[str, Any] | None] = []
    with anyio.fail_after(EXCHANGE_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run, read_recv, write_send, server.create_initialization_options())
            async with read_send, write_recv:
                for line in lines:
                    parsed = classify_line(line)
                    if parsed is not None and not isinstance(parsed, bytes):
                        parsed = _unknown_method(parsed) or parsed
                    if parsed is None:
                        answers.append(None)
                    elif isinstance(parsed, bytes):
                        answers.append(json.loads(parsed))
                    elif isinstance(parsed.message, types.JSONRPCRequest):
                        await read_send.send(parsed)
                        while True:
                            out = wire((await write_recv.receive()).message)
                            if out.get("id") == parsed.message.id and ("result" in out or "error" in out):
                                answers.append(out)
                                break
                    else:
                        await read_send.send(parsed)
                        answers.append(None)
            tg.cancel_scope.cancel()
    return answers


def request(rid: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg).encode()


def initialize(rid: int, version: str) -> bytes:
    return request(
        rid,
        "initialize",
        {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "snapshot", "version": "0"}},
    )


MODERN_METHODS = ("server/discover", "tools/list", "ping")
INITIALIZED = b'{"jsonrpc": "2.0", "method": "notifications/initialized"}'


def modern_meta(version: str) -> dict[str, Any]:
    return {
        "_meta": {
            PROTOCOL_VERSION_KEY: version,
            CLIENT_INFO_KEY: {"name": "snapshot", "version": "0"},
            CLIENT_CAPABILITIES_KEY: {},
        }
    }


def _body(answer: dict[str, Any] | None) -> dict[str, Any]:
    """The answer without its envelope: {"result": ...} or {"error": ...}."""
    if answer is None or answer.get("jsonrpc") != "2.0":
        raise RuntimeError("the SDK did not answer a snapshot request")
    return {k: v for k, v in answer.items() if k in ("result", "error")}


async def record(server: Server[Any]) -> dict[str, Any]:
    """The snapshot for ``server``: its answers to the handshake requests, per protocol version."""
    legacy: dict[str, dict[str, Any]] = {}
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        got = await exchange(
            server, [initialize(1, version), INITIALIZED, request(2, "tools/list"), request(3, "ping")]
        )
        legacy[version] = {"initialize": _body(got[0]), "tools/list": _body(got[2]), "ping": _body(got[3])}
    before = await exchange(server, [request(1, "ping")])
    fallback = await exchange(server, [initialize(1, SENTINEL_VERSION)])
    fallback_version = _body(fallback[0])["result"]["protocolVersion"]
    modern: dict[str, dict[str, Any]] = {}
    lines: list[bytes] = []
    for n, version in enumerate(MODERN_PROTOCOL_VERSIONS):
        for k, method in enumerate(MODERN_METHODS):
            lines.append(request(10 * n + k, method, modern_meta(version)))
    lines.append(request(-1, "tools/list", modern_meta(SENTINEL_VERSION)))
    got = await exchange(server, lines)
    for n, version in enumerate(MODERN_PROTOCOL_VERSIONS):
        modern[version] = {method: _body(got[3 * n + k]) for k, method in enumerate(MODERN_METHODS)}
    return {
        "format": SNAPSHOT_FORMAT,
        "handshake_versions": list(HANDSHAKE_PROTOCOL_VERSIONS),
        "fallback_version": fallback_version,
        "legacy": legacy,
        "legacy_ping_before_initialize": _body(before[0]),
        "modern_versions": list(MODERN_PROTOCOL_VERSIONS),
        "modern": modern,
        "modern_unsupported": _body(got[-1]),
    }
