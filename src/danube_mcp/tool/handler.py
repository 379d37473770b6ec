"""The MCP server: one tool, ``store_credential``, forwarded to the Danube client.

Built on the SDK's low-level ``Server`` rather than FastMCP:

* FastMCP's argument validation quotes argument values (the secret included) in its errors, and
  its structured-output validation costs more CPU per call than the rest of the server together.
  Here the arguments are checked by :func:`danube_mcp.tool.schema.parse_arguments`, whose messages never
  quote a value, and the result is built directly.
* The ``tools/call`` handler is registered directly instead of through ``@server.call_tool()``,
  whose wrapper re-validates with jsonschema and logs unknown tool names at WARNING.

Every failure becomes an ``isError: true`` result here, and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import anyio
import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from danube_mcp import __version__
from danube_mcp.danube.client import DanubeClient
from danube_mcp.danube.errors import DanubeError, MissingApiKey
from danube_mcp.logs import SECRETS
from danube_mcp.secure_input import SecureInputBroker
from danube_mcp.tool.schema import (
    OUTPUT_SCHEMA,
    ArgumentError,
    StoreRequest,
    StoreResult,
    credential_label,
    input_schema,
    parse_arguments,
)
from danube_mcp.tool.secure_flows import Result, SecureInputFlows

logger = logging.getLogger("danube_mcp.tool.handler")

TOOL_NAME: Final = "store_credential"
SANDBOX_PREFIX: Final = "[SANDBOX: local test store, not your Danube account] "

TOOL_DESCRIPTION: Final = (
    "Store an API key or bearer token for a Danube service, so that Danube can authenticate tool "
    "executions on the user's behalf. Storing a credential for a service replaces the one stored "
    "before, so calling again with the same arguments is safe.\n\n"
    "Only store a credential the user has explicitly handed over in this conversation, and confirm "
    "with the user before storing it; never invent or guess a credential. credential_type is "
    "'bearer' or 'api_key'. OAuth services cannot be connected with this tool: they are connected "
    "in the Danube dashboard. Instead of the secret itself, credential_value may be a reference, "
    "'vault://<mount>/<path>#<field>' or 'env://<NAME>', which Danube stores as a reference. "
    "Stored credentials are never returned by any tool."
)

INSTRUCTIONS: Final = (
    "danube-mcp stores credentials in Danube with the store_credential tool. Confirm with the user "
    "before storing anything, and only store credentials the user has explicitly provided."
)

MISSING_KEY_HELP: Final = (
    "Set DANUBE_API_KEY to your Danube API key in the 'env' block of this server's entry in your "
    "MCP host configuration (for example claude_desktop_config.json), then restart the server. "
    "To try the server without an account, start it with --sandbox."
)

# Given the Starlette request of an HTTP call (None over stdio), return the caller's own key.
CallerKey = Callable[[Any], str | None]


class CallerKeyError(Exception):
    """The caller supplied a key that cannot be used; the message says why (never the key)."""


SECURE_INPUT_NOTE: Final = (
    "\n\nSecure input is available: omit credential_value and the user will be asked to enter the "
    "credential on a private page that you never see. Prefer this whenever the user has not already "
    "pasted the credential into the conversation. If the result gives you a link instead "
    "(status 'awaiting_user_input'), show it to the user and, once they have entered the value, "
    "call store_credential again with the same service_id and credential_type and no value."
)


def build_tool(*, secure_input: bool = False) -> types.Tool:
    return types.Tool(
        name=TOOL_NAME,
        title="Store credential",
        description=TOOL_DESCRIPTION + (SECURE_INPUT_NOTE if secure_input else ""),
        input_schema=input_schema(value_optional=secure_input),
        output_schema=OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(
            title="Store credential",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=True,
        ),
    )


def error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def summary_text(result: StoreResult) -> str:
    kind = credential_label(result.credential_type)
    text = (
        f"Stored the {kind} for {result.service_name} (service_id {result.service_id}). "
        "It replaces any credential stored before for this service."
    )
    if result.stored_as == "reference":
        text += " Danube stored it as a reference, not as a secret value."
    if result.notice:
        text += f" Notice from Danube: {result.notice}"
    elif result.deprecated:
        text += " Danube marked storing plaintext values as deprecated."
    return text


class StoreCredentialTool:
    """The ``tools/call`` handler, with the per-server options it needs."""

    def __init__(
        self,
        client: DanubeClient,
        *,
        sandbox: bool = False,
        api_key_problem: str | None = None,
        caller_key: CallerKey | None = None,
        require_client_key: bool = False,
        secure_input: SecureInputBroker | None = None,
        elicitation_possible: bool = True,
    ) -> None:
        self.client = client
        self.sandbox = sandbox
        self.api_key_problem = api_key_problem
        self.caller_key = caller_key
        self.require_client_key = require_client_key
        self.secure_input = secure_input
        self.elicitation_possible = elicitation_possible
        self._prefix = SANDBOX_PREFIX if sandbox else ""
        self._flows = SecureInputFlows(self, secure_input) if secure_input is not None else None
        # Calls in flight, so a graceful shutdown can wait for them and then stop the rest cleanly.
        self.in_flight = 0
        self._scopes: set[anyio.CancelScope] = set()
        self._idle: anyio.Event | None = None

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until no call is in flight, for at most ``seconds``. True if idle."""
        with anyio.move_on_after(seconds):
            while self.in_flight:
                self._idle = anyio.Event()
                await self._idle.wait()
        return self.in_flight == 0

    def stop_calls(self) -> None:
        """End every call in flight with a clean error result (graceful shutdown's last step)."""
        for scope in list(self._scopes):
            scope.cancel()

    def _error(self, text: str) -> types.CallToolResult:
        return error_result(self._prefix + text)

    def _missing_key_message(self) -> str:
        if self.require_client_key or self.caller_key is not None:  # over HTTP: the caller's header
            return (
                "This server needs your own Danube API key: send it in the 'danube-api-key' HTTP "
                "header of your MCP connection (configure the header in your MCP host), then retry."
            )
        problem = self.api_key_problem or "not set"
        return f"No Danube API key is configured: DANUBE_API_KEY is {problem}. {MISSING_KEY_HELP}"

    async def __call__(self, params: types.CallToolRequestParams, ctx: Any = None) -> Result:
        """Handle one call. ``ctx`` is the SDK's request context (session, request id, HTTP request)."""
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        self.in_flight += 1
        try:
            with scope:
                return await self._call(params, ctx)
            # Only reached when stop_calls() cancelled this call (a cancelled client propagates).
            return self._error(
                "danube-mcp is shutting down and stopped this call before Danube answered. The "
                "credential may or may not have been stored; retrying is safe."
            )
        finally:
            self.in_flight -= 1
            self._scopes.discard(scope)
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def _call(self, params: types.CallToolRequestParams, ctx: Any) -> Result:
        if params.name != TOOL_NAME:
            return self._error(f"Unknown tool. This server has one tool: {TOOL_NAME}.")
        try:
            store = parse_arguments(
                params.arguments if params.arguments is not None else {},
                value_optional=self.secure_input is not None,
            )
        except ArgumentError as exc:
            return self._error(f"Invalid arguments: {exc}.")

        key: str | None = None
        if self.caller_key is not None:
            try:
                key = self.caller_key(getattr(ctx, "request", None))
            except CallerKeyError as exc:
                return self._error(str(exc))
        if key is None and (self.require_client_key or not self.client.has_default_key):
            return self._error(self._missing_key_message())

        if not store.credential_value:
            assert self._flows is not None  # the value is only optional with secure input
            return await self._flows.run(store, key, ctx, params)
        result, _ = await self._store(store, key)
        return result

    async def _store(
        self, store: StoreRequest, key: str | None, *, strict_fields: bool = False
    ) -> tuple[types.CallToolResult, str | None]:
        """Store, and return the result with (for error results) its text."""
        try:
            with SECRETS.holding(store.credential_value, key):
                result = await self.client.store_credential(store, api_key=key, strict_fields=strict_fields)
        except MissingApiKey:
            text = self._missing_key_message()
        except DanubeError as exc:
            logger.info("store_credential failed: %s after %d attempt(s)", exc.kind, exc.attempts)
            text = str(exc)
        except Exception as exc:  # never let an unexpected error reach the SDK, which would print it
            logger.error("store_credential: unexpected %s", type(exc).__name__)
            text = "Internal error in danube-mcp while storing the credential. Retrying is safe."
        else:
            logger.info("store_credential: stored %s for a service", result.credential_type)
            summary = self._prefix + summary_text(result)
            # model_construct: every field is built here from checked values, so pydantic's
            # validation (three models per call) would only repeat work on the hot path.
            return (
                types.CallToolResult.model_construct(
                    content=[types.TextContent.model_construct(type="text", text=summary)],
                    structured_content=result.structured(sandbox=self.sandbox),
                    is_error=False,
                ),
                None,
            )
        return self._error(text), self._prefix + text


# How long a client may cache the tool list and the discovery answer. Both are fixed for the life
# of the process and the same for every caller.
LIST_TTL_MS: Final = 10 * 60 * 1000


def build_server(
    client: DanubeClient,
    *,
    sandbox: bool = False,
    api_key_problem: str | None = None,
    caller_key: CallerKey | None = None,
    require_client_key: bool = False,
    secure_input: SecureInputBroker | None = None,
    elicitation_possible: bool = True,
) -> tuple[Server[Any], StoreCredentialTool]:
    """The MCP server with its one tool, talking to Danube through ``client``, and the tool.

    The server speaks every revision the SDK does: ``initialize``-era connections and 2026-07-28
    requests (per-request ``_meta``, ``server/discover``). With ``secure_input``,
    ``credential_value`` becomes optional: when it is omitted the user enters it on a one-time page.
    """
    tool = StoreCredentialTool(
        client,
        sandbox=sandbox,
        api_key_problem=api_key_problem,
        caller_key=caller_key,
        require_client_key=require_client_key,
        secure_input=secure_input,
        elicitation_possible=elicitation_possible,
    )
    tools = [build_tool(secure_input=secure_input is not None)]
    schemas = {t.name: t.input_schema for t in tools}

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Result:
        return await tool(params, ctx)

    hint = CacheHint(ttl_ms=LIST_TTL_MS, scope="public")
    server: Server[Any] = Server(
        "danube-mcp",
        version=__version__,
        title="Danube credential store",
        instructions=INSTRUCTIONS,
        cache_hints={"tools/list": hint, "server/discover": hint},
        # For the SDK's Mcp-Param-* header check on 2026-07-28 calls: without it the SDK runs the
        # whole tools/list handler on every call to find the called tool's schema.
        get_tool_input_schema=schemas.get,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )
    # The SDK's default OpenTelemetry middleware is replaced: no exporter is configured here, and a
    # span per message is pure cost. The one middleware left keeps method names out of errors.
    server.middleware = [_quiet_method_not_found]
    return server, tool


async def _quiet_method_not_found(ctx: Any, call_next: Any) -> Any:
    """-32601 without ``data``: the SDK puts the requested method name there, and a client can put
    anything in a method name."""
    try:
        return await call_next(ctx)
    except MCPError as exc:
        if exc.error.code == -32601 and exc.error.data is not None:
            raise MCPError(code=-32601, message="Method not found") from None
        raise
