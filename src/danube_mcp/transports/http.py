"""The HTTP transports (streamable HTTP at ``/mcp``, legacy SSE at ``/sse`` + ``/messages/``) as
one ASGI application, and the security layer in front of them.

A plain ASGI app rather than a Starlette router: four fixed paths need no routing framework, and
each layer below costs a function call, not a middleware stack.

Order of checks for every request except ``GET /healthz``:
Host (421) → Origin (403) → access token (401) → body size (413) → the MCP transport.
Below ASGI, in the server ``serve_http`` runs, each connection first passes the connection cap
(503) and must send its whole request within the read deadline (408): see ``limits.py``.
The SDK's own answers are rewritten where they would quote the request back (its 400 for an
invalid JSON-RPC body echoes the body, secret included).

Run it with ``danube-mcp --transport ...`` or under any ASGI server through the factory::

    uvicorn --factory danube_mcp.transports.http:create_app --workers 4 --host 0.0.0.0 --port 8000
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import parse_qsl

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.runner import serve_loop
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from danube_mcp.backend import Backend, open_backend
from danube_mcp.config import ConfigError, Settings, is_placeholder, load_settings
from danube_mcp.jsonutil import loads_strict, separators_over
from danube_mcp.logs import SECRETS
from danube_mcp.secure_input import PATH_PREFIX as SECURE_INPUT_PREFIX
from danube_mcp.secure_input import SecureInputBroker
from danube_mcp.tool.handler import TOOL_NAME, CallerKeyError, build_server
from danube_mcp.transports.asgi import Message, Receive, Scope, Send, header, read_body, send_json
from danube_mcp.transports.http_options import Allowlist, HttpOptions, env_bool
from danube_mcp.transports.modern_fast import declares_param_headers, plain_call, serve_plain_call
from danube_mcp.transports.sessions import SessionLimits

logger = logging.getLogger("danube_mcp.transports.http")


MCP_PATH: Final = "/mcp"
SSE_PATH: Final = "/sse"
MESSAGES_PATH: Final = "/messages/"
HEALTH_PATH: Final = "/healthz"
# A tools/call carries at most a 16 KiB value and a short service id: 64 KiB is four times what
# any valid request needs, and small enough that parsing it never holds the event loop.
MAX_BODY_BYTES: Final = 64 * 1024
# Commas and colons outside strings, i.e. about how many JSON values a body holds. The largest
# request a client sends (an initialize with every capability, a 2026 call with its _meta) needs
# under a hundred; refusing more before parsing keeps a 64 KiB body of tiny values (~32,000 of
# them, ~4 ms to parse and validate twice) from holding the event loop.
MAX_JSON_SEPARATORS: Final = 1024
CLIENT_KEY_HEADER: Final = "danube-api-key"
PROTOCOL_VERSION_META: Final = "io.modelcontextprotocol/protocolVersion"
HEADER_MISMATCH: Final = -32020


# --------------------------------------------------------------------------------------------
# Small ASGI helpers


def _jsonrpc_error(code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


async def _drain(receive: Receive) -> None:
    """Consume a request body we will not read, so the connection can be reused."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)


def _opens_session(scope: Scope, path: str) -> bool:
    if path == SSE_PATH:
        return True
    if path in (MCP_PATH, MCP_PATH + "/"):
        return header(scope, b"mcp-session-id") is None
    return False


# What the SDK mints for streamable HTTP (uuid4().hex).
_MCP_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_SESSION_ID = re.compile(
    rb"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def _session_param_ok(scope: Scope) -> bool:
    """True if the query names exactly one ``session_id``, shaped like a UUID.

    Decoded the way Starlette decodes it for the SDK (percent-escapes, ``+``, repeated names), so
    what is checked here is exactly what the SDK will read and log.
    """
    raw = scope.get("query_string", b"").decode("latin-1")
    values = [v for k, v in parse_qsl(raw, keep_blank_values=True) if k == "session_id"]
    return len(values) == 1 and values[0].isascii() and _SESSION_ID.fullmatch(values[0].encode()) is not None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when it comes

    return replay


# Sanitised replacements for SDK error texts that may quote the request.
_SAFE_ERRORS: Final = (
    ("Parse error", "Parse error: the body is not valid JSON"),
    ("Validation error", "Invalid Request: the body is not a valid JSON-RPC message"),
    ("Bad Request: Unsupported protocol version", "Bad Request: unsupported MCP-Protocol-Version header"),
)


def _sanitising_send(send: Send) -> Send:
    """Rewrite 4xx bodies from the SDK so they never quote the request back."""
    state: dict[str, Any] = {"start": None, "chunks": []}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            state["start"] = message
            return
        if state["start"] is None:
            await send(message)
            return
        if message["type"] == "http.response.body":
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = state["start"]
            state["start"] = None
            body = _sanitise_error_body(b"".join(state["chunks"]))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    return wrapped


def _sanitise_error_body(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace")
        return (text.split(":", 1)[0][:200]).encode()
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = str(data["error"].get("message", ""))
        for prefix, safe in _SAFE_ERRORS:
            if message.startswith(prefix):
                message = safe
                break
        else:
            message = message.split(":", 1)[0][:200]
        code = data["error"].get("code")
        error: dict[str, Any] = {"code": code, "message": message}
        detail = data["error"].get("data")
        if code == -32022 and isinstance(detail, dict):
            # The spec's unsupported-version answer names what is served; the requested value is
            # kept only when it is a plain version-like token.
            kept: dict[str, Any] = {
                "supported": [v for v in detail.get("supported", []) if isinstance(v, str)]
            }
            requested = detail.get("requested")
            if isinstance(requested, str) and _VERSION_TOKEN.fullmatch(requested):
                kept["requested"] = requested
            error["data"] = kept
        data["error"] = error
        return json.dumps(data).encode()
    return b'{"error": "bad request"}'


def _is_modern(scope: Scope) -> bool:
    version = header(scope, b"mcp-protocol-version")
    return version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS


_VERSION_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_body(
    body: bytes, scope: Scope, *, modern_rules: bool = True, served: bool = True
) -> tuple[int, int, str] | None:
    """Cheap checks on a POST body before the SDK parses it: (status, code, message) or None."""
    return _parse_body(body, scope, modern_rules=modern_rules, served=served)[0]


def _parse_body(
    body: bytes, scope: Scope, *, modern_rules: bool = True, served: bool = True
) -> tuple[tuple[int, int, str] | None, Any]:
    """Cheap checks on a POST body before the SDK parses it: ((status, code, message) or None,
    the parsed message or None).

    Arrays (batches) and bodies of more than ``MAX_JSON_SEPARATORS`` values are refused before
    any parsing; the body is parsed once here, with nesting bounded; on a path that is served
    (``served``), an object whose ``jsonrpc`` is not "2.0" is refused here rather than parsed
    again by the SDK; a 2026-07-28 body must name the same
    revision as its MCP-Protocol-Version header. No message ever quotes the body.
    """
    start = body.lstrip()[:1]
    if not start:
        return None, None  # an empty body is left to the SDK to refuse
    if start == b"[":
        return (400, -32600, "Invalid Request: batches are not supported"), None
    if separators_over(body, MAX_JSON_SEPARATORS):
        # Bounds what the two parses of a body the SDK serves (ours, then its own) can build.
        return (400, -32600, "Invalid Request: more JSON values than any MCP request holds"), None
    try:
        message = loads_strict(body)
    except ValueError:
        # The SDK answers invalid UTF-8 or absurdly deep JSON with a 500 and a traceback.
        return (400, -32700, "Parse error: the body is not valid JSON"), None
    if not isinstance(message, dict):
        return (400, -32600, "Invalid Request: the body must be one JSON-RPC object"), None
    if served and message.get("jsonrpc") != "2.0":
        # Refused here, already parsed: handing it on would cost the SDK a second parse, a
        # validation error and, on the initialize-era path, a session set up and torn down.
        return (400, -32600, "Invalid Request: the body is not a valid JSON-RPC message"), None
    params = message.get("params") if isinstance(message, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    claimed = meta.get(PROTOCOL_VERSION_META) if isinstance(meta, dict) else None
    if modern_rules and claimed is not None and claimed in MODERN_PROTOCOL_VERSIONS:
        sent = header(scope, b"mcp-protocol-version")
        if sent != claimed:
            return (
                400,
                HEADER_MISMATCH,
                "MCP-Protocol-Version header is missing or does not match params._meta protocolVersion",
            ), None
    return None, message


# --------------------------------------------------------------------------------------------
# The application


def caller_key_from_request(request: Any) -> str | None:
    """The caller's own Danube key from the ``danube-api-key`` header (never from the query)."""
    if request is None:
        return None
    value = request.headers.get(CLIENT_KEY_HEADER)
    if value is None:
        return None
    value = value.strip()
    if not value or is_placeholder(value):
        raise CallerKeyError(
            "The danube-api-key header you sent is empty or an unsubstituted placeholder: configure "
            "your real Danube API key in the header, or leave the header out."
        )
    return str(value)


class DanubeHttpApp:
    """ASGI app: ``/healthz``, ``/mcp``, ``/sse`` and ``/messages/``, with the checks in front."""

    def __init__(self, backend: Backend, options: HttpOptions) -> None:
        self.backend = backend
        self.options = options
        self.allow = Allowlist.build(options.allowed_hosts, options.allowed_origins)
        self._token = options.auth_token.encode() if options.auth_token else None
        if options.auth_token:
            SECRETS.add(options.auth_token)
        # Caller identities are hashed with a per-process salt: a session is bound to the hash of
        # the access token and caller key that opened it, never to the values themselves.
        # With shared state (several processes) the salt, the store and the requestState key are
        # the same on every replica, so a retry may land on any of them.
        shared = options.shared_state
        self._identity_salt = shared.identity_salt if shared is not None else secrets.token_bytes(32)
        self.secure_input = (
            SecureInputBroker(
                ttl=options.secure_input_ttl,
                public_url=options.public_url,
                **(shared.broker_parts() if shared is not None else {}),
            )
            if options.secure_input
            else None
        )
        self.server, self.tool = build_server(
            backend.client,
            sandbox=backend.sandbox,
            api_key_problem=backend.api_key_problem,
            caller_key=caller_key_from_request,
            require_client_key=options.require_client_key,
            secure_input=self.secure_input,
            # URL elicitation needs a server-to-client request on a live stream.
            elicitation_possible=not (options.stateless or options.json_response),
        )
        # 2026-07-28 tools/call in JSON-response mode: plain requests take the short road
        # (transports/modern_fast.py) unless the schema asks for Mcp-Param-* header checks.
        schema = self.server.get_tool_input_schema
        self._plain_calls_here = (
            options.json_response and schema is not None and not declares_param_headers(schema(TOOL_NAME))
        )
        serve_streamable = options.transport in ("streamable-http", "http")
        serve_sse = options.transport in ("sse", "http")
        self.sessions = SessionLimits(
            total=options.max_sessions,
            per_caller=options.max_sessions_per_caller,
            idle_seconds=options.session_idle_seconds,
        )
        self.session_manager = (
            StreamableHTTPSessionManager(
                app=self.server,
                json_response=options.json_response,
                stateless=options.stateless,
                security_settings=None,  # Host/Origin are checked here, before the SDK
                max_request_body_size=MAX_BODY_BYTES,
                session_idle_timeout=options.session_idle_seconds,
                max_sessions=options.max_sessions,
            )
            if serve_streamable
            else None
        )
        self.sse = SseServerTransport(MESSAGES_PATH) if serve_sse else None
        self._init_options = self.server.create_initialization_options()
        self.draining = False  # set on the first shutdown signal: new MCP requests get 503

    def identity(self, scope: Scope) -> str:
        """A salted hash of what identifies the caller: the access token and the caller key."""
        mac = hmac.new(self._identity_salt, digestmod=hashlib.sha256)
        for name in (b"authorization", CLIENT_KEY_HEADER.encode()):
            value = (header(scope, name) or "").strip().encode("latin-1")
            mac.update(len(value).to_bytes(4, "big") + value)
        return mac.hexdigest()[:32]

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        try:
            if self.session_manager is not None:
                async with self.session_manager.run():
                    yield
            else:
                yield
        finally:
            if self.secure_input is not None:
                await self.secure_input.store.aclose()
            await self.backend.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return  # websockets are not served
        path: str = scope["path"]
        if path == HEALTH_PATH:
            await _drain(receive)
            await send_json(send, 200, {"status": "ok"})
            return
        if not self.allow.host_ok(header(scope, b"host")):
            # DNS-rebinding protection covers every path but /healthz, secure input pages included.
            await _drain(receive)
            await send_json(
                send, 421, {"error": "misdirected_request", "error_description": "Invalid Host header"}
            )
            return
        if path.startswith(SECURE_INPUT_PREFIX) and self.secure_input is not None:
            # A browser page: no bearer token there; it checks its own Origin and single-use token.
            await self.secure_input.app(scope, receive, send)
            return
        if not self.allow.origin_ok(header(scope, b"origin")):
            await _drain(receive)
            await send_json(send, 403, {"error": "forbidden", "error_description": "Origin not allowed"})
            return
        if self._token is not None and not self._authorized(scope):
            await _drain(receive)
            await send_json(
                send,
                401,
                {
                    "error": "invalid_token",
                    "error_description": "A valid 'Authorization: Bearer' token is required",
                },
                ((b"www-authenticate", b'Bearer realm="danube-mcp"'),),
            )
            return
        identity = self.identity(scope)
        # The SDK binds each session to this principal and answers 404 to anyone else.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=identity, scopes=[]))
        if self.draining and _opens_session(scope, path):
            # New sessions are refused while draining; requests and replies within open sessions
            # (an elicitation result, a cancellation) still go through.
            await _drain(receive)
            await send_json(
                send,
                503,
                _jsonrpc_error(-32000, "Server is shutting down; retry shortly"),
                ((b"retry-after", b"2"), (b"connection", b"close")),
            )
            return
        is_mcp = path in (MCP_PATH, MCP_PATH + "/") and self.session_manager is not None
        session_id = header(scope, b"mcp-session-id") if is_mcp else None
        if is_mcp and scope["method"] in ("GET", "DELETE") and session_id is None:
            # No legacy session named: 2026-07-28 has no GET stream and no DELETE.
            await _drain(receive)
            await send_json(send, 405, {"error": "method_not_allowed"}, ((b"allow", b"POST"),))
            return
        if (
            is_mcp
            and scope["method"] == "GET"
            and "text/event-stream" not in (header(scope, b"accept") or "")
        ):
            # The SDK would open the stream anyway; the spec says a GET must accept SSE.
            await _drain(receive)
            await send_json(
                send, 406, _jsonrpc_error(-32600, "Not Acceptable: GET must accept text/event-stream")
            )
            return
        opening = False
        if scope["method"] == "POST":
            body = await read_body(scope, receive, MAX_BODY_BYTES)
            if body is None:
                await send_json(send, 413, _jsonrpc_error(-32600, "Request body too large"))
                return
            # The 2026 header rules belong to /mcp; legacy SSE's /messages/ answers a 2026 probe
            # with -32601 from the initialize-era loop, so dual-era clients fall back.
            served = is_mcp or (path == MESSAGES_PATH and self.sse is not None)
            problem, message = (
                _parse_body(body, scope, modern_rules=is_mcp, served=served)
                if path != HEALTH_PATH
                else (None, None)
            )
            if problem is not None:
                status, code, text = problem
                await send_json(send, status, _jsonrpc_error(code, text))
                return
            if is_mcp and self._plain_calls_here:
                plain = plain_call(scope, message, TOOL_NAME)
                if plain is not None and message is not None:
                    version, params = plain
                    await serve_plain_call(
                        self.server,
                        # build_server keeps the SDK's default lifespan, whose state is an empty
                        # dict that no handler reads: no need to reach into the session manager.
                        {},
                        scope,
                        receive,
                        _sanitising_send(send),
                        message["id"],
                        version,
                        params,
                    )
                    return
            receive = _replay(body, receive)
            opening = is_mcp and session_id is None and not self.options.stateless and not _is_modern(scope)
        if opening or (path == SSE_PATH and self.sse is not None):
            refusal = self._session_refusal(scope, identity, reserve=opening)
            if refusal is not None:
                status, text = refusal
                await _drain(receive)
                await send_json(send, status, _jsonrpc_error(-32000, text))
                return

        # Answered here rather than by the SDK, which logs the id it was sent: an id of the wrong
        # shape, unknown, or opened by another caller is "not found", all alike.
        if (
            is_mcp
            and session_id is not None
            and not self.options.stateless
            and not _is_modern(scope)
            and (not _MCP_SESSION_ID.fullmatch(session_id) or self.sessions.owner(session_id) != identity)
        ):
            await _drain(receive)
            await send_json(send, 404, _jsonrpc_error(-32600, "Session not found"))
            return
        if is_mcp:
            assert self.session_manager is not None
            if session_id is not None:
                self.sessions.touch(session_id)
                if scope["method"] == "DELETE":
                    self.sessions.closed(session_id)
            out = _sanitising_send(send)
            if opening:
                out = self.sessions.watching(out, identity)
            try:
                await self.session_manager.handle_request(scope, receive, out)
            finally:
                if session_id is not None:
                    self.sessions.touch(session_id)  # idle time counts from the end of a request
                if opening:
                    self.sessions.release(identity)  # the session it opened, if any, now counts
        elif path == SSE_PATH and self.sse is not None:
            await self._serve_sse(scope, receive, send, identity)
        elif path == MESSAGES_PATH and self.sse is not None:
            if scope["method"] != "POST":
                await _drain(receive)
                await send_json(send, 405, {"error": "method_not_allowed"}, ((b"allow", b"POST"),))
                return
            if not _session_param_ok(scope):
                # Checked here because the SDK logs a malformed session id verbatim.
                await _drain(receive)
                await send_json(send, 400, _jsonrpc_error(-32600, "Invalid session ID"))
                return
            await self.sse.handle_post_message(scope, receive, _sanitising_send(send))
        else:
            await _drain(receive)
            await send_json(send, 404, {"error": "not_found"})

    def _session_refusal(
        self, scope: Scope, identity: str, *, reserve: bool = False
    ) -> tuple[int, str] | None:
        """Why a new session may not be opened by this caller now, or None."""
        if (
            self.options.public_bind
            and self._token is None
            and not (header(scope, CLIENT_KEY_HEADER.encode()) or "").strip()
        ):
            return 401, "Sessions on this server need your own Danube key in the danube-api-key header"
        return self.sessions.admit(identity, reserve=reserve)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        value = header(scope, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        # Compare in constant time even when the scheme is wrong.
        ok = hmac.compare_digest(token.strip().encode("latin-1"), self._token)
        return ok and scheme.lower() == "bearer"

    async def _serve_sse(self, scope: Scope, receive: Receive, send: Send, identity: str) -> None:
        assert self.sse is not None
        if scope["method"] != "GET":
            await send_json(send, 405, {"error": "method_not_allowed"}, ((b"allow", b"GET"),))
            return
        self.sessions.sse_opened(identity)
        try:
            async with self.sse.connect_sse(scope, receive, send) as (read, write):
                # Legacy SSE is initialize-era only: the handshake loop, not the dual-era one.
                await serve_loop(self.server, read, write, lifespan_state={}, init_options=self._init_options)
        finally:
            self.sessions.sse_closed(identity)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                message = await receive()  # lifespan.shutdown
        except Exception as exc:
            logger.error("HTTP application failed: %s", type(exc).__name__)
            await send({"type": "lifespan.startup.failed", "message": type(exc).__name__})
            return
        await send({"type": "lifespan.shutdown.complete"})


def nodelay_on_listeners() -> int:
    """Set TCP_NODELAY on every listening TCP socket this process holds; returns how many.

    ``uvicorn --workers N`` binds its socket with ``socket.socket(family)``, whose protocol number
    is 0, and asyncio turns Nagle's algorithm off only on connections whose protocol is TCP by
    number. Each answer is written in two parts (head, body), so with Nagle on the body waits for
    the client's delayed ACK: ~40 ms per call (measured: p50 44 ms at one client, against 1 ms with
    one worker). Accepted sockets inherit TCP_NODELAY from the listening socket, so setting it
    there fixes every connection. Linux only (/proc); elsewhere nothing is done.
    """
    import socket

    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    done = 0
    for fd in fds:
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue  # not a socket (or already closed)
        with sock:
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                ):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    done += 1
            except OSError:
                continue
    return done


def create_app(
    settings: Settings | None = None,
    options: HttpOptions | None = None,
    *,
    sandbox: bool | None = None,
    sandbox_db: str | None = None,
    backend: Backend | None = None,
) -> DanubeHttpApp:
    """ASGI application factory. With no arguments, everything comes from the environment
    (``DANUBE_*`` and ``DANUBE_MCP_*``), as ``uvicorn --factory danube_mcp.http:create_app`` needs."""
    from_env = settings is None
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            print(f"danube-mcp: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    if from_env:
        from danube_mcp.logs import setup_logging

        setup_logging(settings.log_level)
        # Under `uvicorn --workers N` the listening socket already exists here (bound by the parent).
        nodelay_on_listeners()
        if settings.api_key is not None:
            SECRETS.add(settings.api_key.get_secret_value())
    if sandbox is None:
        sandbox = env_bool("DANUBE_MCP_SANDBOX")
    if options is None:
        transport = os.environ.get("DANUBE_MCP_TRANSPORT", "").strip() or "http"
        try:
            if transport not in ("streamable-http", "sse", "http"):
                raise ConfigError(
                    "DANUBE_MCP_TRANSPORT must be streamable-http, sse or http for the ASGI app"
                )
            # Under an external ASGI server the bind address is not known here: assume a public one.
            options = HttpOptions.resolve(None, transport, settings, bind_known=False, sandbox=sandbox)
        except ConfigError as exc:
            print(f"danube-mcp: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if options.shared_state is not None:
            try:
                options.shared_state.check_reachable()
            except ConfigError as exc:
                print(f"danube-mcp: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
    if backend is None:
        backend = open_backend(
            settings,
            sandbox=sandbox,
            sandbox_db=sandbox_db or os.environ.get("DANUBE_MCP_SANDBOX_DB") or None,
        )
    return DanubeHttpApp(backend, options)


SHUTDOWN_GRACE: Final = 3.0


def serve_http(run: Any, options: HttpOptions, backend: Backend, listeners: list[Any] | None = None) -> int:
    """Serve with uvicorn until SIGINT/SIGTERM; report the bound address on stderr.

    Graceful shutdown: on the first signal, new MCP requests get 503 while calls in flight have
    ``SHUTDOWN_GRACE`` seconds to finish; calls still running then end with a clean error result;
    only then are streams closed and the process exits (0). A second signal exits at once.
    """
    import asyncio

    import anyio
    import uvicorn
    from sse_starlette.sse import AppStatus

    from danube_mcp.transports.bind import ListeningSocket, bind_listeners
    from danube_mcp.transports.limits import (
        ConnectionGuard,
        RepeatFilter,
        connection_room,
        describe_cap,
        raise_open_files_limit,
    )

    if listeners is None:  # BindError (one line) before anything starts
        listeners = bind_listeners(options.host, options.port)
    cap, cap_note = describe_cap(options.max_connections, connection_room(raise_open_files_limit()))
    if cap_note:
        logger.warning("%s", cap_note)
    guard = ConnectionGuard(max_connections=cap, read_timeout=options.read_timeout)
    # uvicorn warns once per malformed request ("Invalid HTTP request received."), as fast as a
    # client can send them: each distinct line at most every 10 s, with a count.
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RepeatFilter) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(RepeatFilter())
    app = create_app(run.settings, options, backend=backend)
    # sse-starlette would end every open SSE response (and with it the answers of calls in
    # flight) on the first signal; the drain below decides when streams close instead.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]

    class Server(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None
        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining or self.loop is None:
                AppStatus.should_exit = True
                super().handle_exit(sig, frame)
                self.force_exit = self.force_exit or self.draining
                return
            self.draining = True
            app.draining = True
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.drain(sig)))  # type: ignore[union-attr]

        async def drain(self, sig: int) -> None:
            tool = app.tool
            if not await tool.wait_idle(SHUTDOWN_GRACE):
                logger.warning("shutting down: stopping %d call(s) still in flight", tool.in_flight)
                tool.stop_calls()
                await tool.wait_idle(1.0)
            await asyncio.sleep(0.05)  # let the last answers reach their streams
            AppStatus.should_exit = True
            uvicorn.Server.handle_exit(self, sig, None)

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        # h11 with the connection cap and the read deadline (transports/limits.py).
        http=guard.protocol_class(),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        server_header=False,
    )
    server = Server(config)
    # The cap is checked where connections are accepted, before asyncio takes them on.
    guard.connections = server.server_state.connections
    for sock in listeners:
        if isinstance(sock, ListeningSocket):
            sock.gate = guard.gate

    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler turns
    # that into a normal return, so a graceful stop exits 0 rather than dying by signal.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)

    async def main() -> None:
        server.loop = asyncio.get_running_loop()
        server.loop.set_exception_handler(guard.exception_handler)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, listeners)
            while not server.started:
                if server.should_exit:
                    return
                await anyio.sleep(0.01)  # uvicorn offers no start-up event to wait on
            sock = server.servers[0].sockets[0].getsockname()
            host = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
            paths = {"streamable-http": MCP_PATH, "sse": SSE_PATH, "http": f"{MCP_PATH} and {SSE_PATH}"}
            print(
                f"danube-mcp: listening on http://{host}:{sock[1]} ({paths[options.transport]})",
                file=sys.stderr,
                flush=True,
            )

    anyio.run(main)
    return 0 if server.started else 1
