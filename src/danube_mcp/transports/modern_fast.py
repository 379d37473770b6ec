"""A short road for the request this server exists for: a plain 2026-07-28 ``tools/call`` of
``store_credential`` over HTTP in JSON-response mode.

The SDK's entry for a 2026-07-28 POST (``handle_modern_request``) wraps the request in Starlette
objects, runs a transport-security pass the app has already done, parses the body a second time,
validates the envelope into pydantic models, classifies it, and answers through a Starlette
``Response``: about a third of the server's CPU per call (bench/README.md). Here a request that
is plain (every header and ``_meta`` field is one the SDK's ladder would accept and nothing that
would change its answer) is handed straight to the SDK's own per-request kernel,
``mcp.server.runner.serve_one``, with the body parsed once. The handler, its context, the
middleware, parameter validation and result shaping are the SDK's, unchanged; only the HTTP
envelope around them is done here. Anything not plain (an unknown ``_meta`` key, a progress token,
``Mcp-Param-*`` headers, a duplicate routing header, another method, another tool name) goes down
the SDK's road as before, so every rejection and every rarer feature keeps the SDK's behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
from mcp.server.connection import Connection
from mcp.server.lowlevel import Server
from mcp.server.runner import modern_error_data, serve_one
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request

from danube_mcp.transports.asgi import Receive, Scope, Send

PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_META: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO_META: Final = "io.modelcontextprotocol/clientInfo"
PLAIN_META_KEYS: Final = frozenset({PROTOCOL_VERSION_META, CLIENT_CAPABILITIES_META, CLIENT_INFO_META})
PLAIN_PARAM_KEYS: Final = frozenset({"name", "arguments", "_meta"})
REQUEST_KEYS: Final = frozenset({"jsonrpc", "id", "method", "params"})
# The SDK's table from JSON-RPC error code to HTTP status on this path (mcp.shared.inbound).
ERROR_STATUS: Final = {
    -32700: 400,
    -32600: 400,
    -32602: 400,
    -32020: 400,
    -32021: 400,
    -32022: 400,
    -32601: 404,
}


def _accepts_json(accept: str) -> bool:
    """The SDK's reading of Accept for a JSON answer (``*/*`` and ``application/*`` count)."""
    types = [part.split(";", 1)[0].strip().lower() for part in accept.split(",")]
    return any(t in ("application/json", "application/*", "*/*") for t in types)


def declares_param_headers(schema: Any) -> bool:
    """Whether a tool's input schema annotates any property with ``x-mcp-header`` (then the SDK
    validates ``Mcp-Param-*`` headers on every call, and the short road must not be taken)."""
    if isinstance(schema, dict):
        return "x-mcp-header" in schema or any(declares_param_headers(v) for v in schema.values())
    if isinstance(schema, list):
        return any(declares_param_headers(v) for v in schema)
    return False


def plain_call(scope: Scope, message: Any, tool_name: str) -> tuple[str, dict[str, Any]] | None:
    """(protocol version, params) when ``message`` is a plain 2026-07-28 ``tools/call`` of
    ``tool_name`` that the SDK would serve without objection; None for anything else."""
    if not isinstance(message, dict) or message.keys() != REQUEST_KEYS:
        return None
    rid = message["id"]
    if message["jsonrpc"] != "2.0" or message["method"] != "tools/call":
        return None
    if not (isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))):
        return None
    params = message["params"]
    if not isinstance(params, dict) or not params.keys() <= PLAIN_PARAM_KEYS:
        return None
    if params.get("name") != tool_name or not isinstance(params.get("arguments", {}), dict):
        return None
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not meta.keys() <= PLAIN_META_KEYS:
        return None
    version = meta.get(PROTOCOL_VERSION_META)
    if version not in MODERN_PROTOCOL_VERSIONS or not isinstance(meta.get(CLIENT_CAPABILITIES_META), dict):
        return None
    if not isinstance(meta.get(CLIENT_INFO_META, {}), dict):
        return None
    seen: dict[bytes, bytes] = {}
    for key, value in scope.get("headers", ()):
        if key.startswith(b"mcp-param-"):
            return None
        if key in (b"mcp-protocol-version", b"mcp-method", b"mcp-name", b"content-type", b"accept"):
            if key in seen:
                return None  # the SDK refuses a duplicated routing header; leave it that answer
            seen[key] = value
    if (
        seen.get(b"mcp-protocol-version") != version.encode()
        or seen.get(b"mcp-method") != b"tools/call"
        or seen.get(b"mcp-name") != tool_name.encode()
        or not seen.get(b"content-type", b"").lower().startswith(b"application/json")
        or not _accepts_json(seen.get(b"accept", b"").decode("latin-1"))
    ):
        return None
    return version, params


@dataclass
class _Exchange:
    """The dispatch context of one HTTP exchange (the SDK's ``DispatchContext`` protocol): no
    back-channel (2026-07-28 servers send no requests), and in JSON mode no stream that could
    carry a notification, so notifications and progress are dropped as the SDK drops them."""

    transport: TransportContext
    request_id: Any
    message_metadata: ServerMessageMetadata
    progress_token: Any = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)
    can_send_request: bool = field(default=False, init=False)

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: Any = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(self, method: str, params: Mapping[str, Any] | None, opts: Any = None) -> None:
        return None

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None


async def serve_plain_call(
    server: Server[Any],
    lifespan_state: Any,
    scope: Scope,
    receive: Receive,
    send: Send,
    request_id: Any,
    version: str,
    params: dict[str, Any],
) -> None:
    """Serve one plain call through the SDK's kernel and answer it as the SDK's JSON mode does."""
    meta = params["_meta"]
    connection = Connection.from_envelope(version, meta.get(CLIENT_INFO_META), meta[CLIENT_CAPABILITIES_META])
    request = Request(scope, receive)
    exchange = _Exchange(
        transport=TransportContext(kind="streamable-http", can_send_request=False, headers=request.headers),
        request_id=request_id,
        message_metadata=ServerMessageMetadata(request_context=request),
    )
    status = 200
    try:
        result = await serve_one(
            server, exchange, "tools/call", params, connection=connection, lifespan_state=lifespan_state
        )
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
    except Exception as exc:  # the SDK's own mapping: typed errors keep their code, the rest is -32603
        error = modern_error_data(exc)
        status = ERROR_STATUS.get(error.code, 200)
        payload = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": error.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
