"""The MCP server: one tool, ``store_credential``, forwarded to the Danube client.

Built on the SDK's low-level ``Server`` rather than FastMCP:

* FastMCP's argument validation quotes argument values (the secret included) in its errors, and
  its structured-output validation costs more CPU per call than the rest of the server together.
  Here the arguments are checked by :func:`danube_mcp.models.parse_arguments`, whose messages never
  quote a value, and the result is built directly.
* The ``tools/call`` handler is registered directly instead of through ``@server.call_tool()``,
  whose wrapper re-validates with jsonschema and logs unknown tool names at WARNING.

Every failure becomes an ``isError: true`` result here, and only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from mcp import types
from mcp.server.lowlevel import Server

from danube_mcp import __version__
from danube_mcp.danube import DanubeClient, DanubeError, MissingApiKey
from danube_mcp.logs import SECRETS
from danube_mcp.models import OUTPUT_SCHEMA, ArgumentError, StoreResult, input_schema, parse_arguments

logger = logging.getLogger("danube_mcp.server")

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


def build_tool() -> types.Tool:
    return types.Tool(
        name=TOOL_NAME,
        title="Store credential",
        description=TOOL_DESCRIPTION,
        inputSchema=input_schema(),
        outputSchema=OUTPUT_SCHEMA,
        annotations=types.ToolAnnotations(
            title="Store credential",
            readOnlyHint=False,
            destructiveHint=True,
            idempotentHint=True,
            openWorldHint=True,
        ),
    )


def error_result(text: str) -> types.ServerResult:
    return types.ServerResult(
        types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
    )


def summary_text(result: StoreResult) -> str:
    kind = "bearer token" if result.credential_type == "bearer" else "API key"
    if result.credential_type not in ("bearer", "api_key"):
        kind = f"{result.credential_type} credential"
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
    ) -> None:
        self.client = client
        self.sandbox = sandbox
        self.api_key_problem = api_key_problem
        self.caller_key = caller_key
        self.require_client_key = require_client_key
        self._prefix = SANDBOX_PREFIX if sandbox else ""

    def _error(self, text: str) -> types.ServerResult:
        return error_result(self._prefix + text)

    def _missing_key_message(self) -> str:
        if self.require_client_key:
            return (
                "This server needs your own Danube API key: send it in the 'danube-api-key' HTTP "
                "header of your MCP connection (configure the header in your MCP host), then retry."
            )
        problem = self.api_key_problem or "not set"
        return f"No Danube API key is configured: DANUBE_API_KEY is {problem}. {MISSING_KEY_HELP}"

    async def __call__(self, params: types.CallToolRequestParams, request: Any = None) -> types.ServerResult:
        if params.name != TOOL_NAME:
            return self._error(f"Unknown tool. This server has one tool: {TOOL_NAME}.")
        try:
            store = parse_arguments(params.arguments if params.arguments is not None else {})
        except ArgumentError as exc:
            return self._error(f"Invalid arguments: {exc}.")

        key: str | None = None
        if self.caller_key is not None:
            try:
                key = self.caller_key(request)
            except CallerKeyError as exc:
                return self._error(str(exc))
        if key is None and (self.require_client_key or not self.client.has_default_key):
            return self._error(self._missing_key_message())

        try:
            with SECRETS.holding(store.credential_value, key):
                result = await self.client.store_credential(store, api_key=key)
        except MissingApiKey:
            return self._error(self._missing_key_message())
        except DanubeError as exc:
            logger.info("store_credential failed: %s after %d attempt(s)", exc.kind, exc.attempts)
            return self._error(str(exc))
        except Exception as exc:  # never let an unexpected error reach the SDK, which would print it
            logger.error("store_credential: unexpected %s", type(exc).__name__)
            return self._error("Internal error in danube-mcp while storing the credential. Retrying is safe.")
        logger.info("store_credential: stored %s for a service", result.credential_type)
        return types.ServerResult(
            types.CallToolResult(
                content=[types.TextContent(type="text", text=self._prefix + summary_text(result))],
                structuredContent=result.structured(sandbox=self.sandbox),
                isError=False,
            )
        )


def build_server(
    client: DanubeClient,
    *,
    sandbox: bool = False,
    api_key_problem: str | None = None,
    caller_key: CallerKey | None = None,
    require_client_key: bool = False,
) -> Server[Any, Any]:
    """The MCP server with its one tool, talking to Danube through ``client``."""
    server: Server[Any, Any] = Server(
        "danube-mcp", version=__version__, instructions=INSTRUCTIONS, website_url=None
    )
    tool = StoreCredentialTool(
        client,
        sandbox=sandbox,
        api_key_problem=api_key_problem,
        caller_key=caller_key,
        require_client_key=require_client_key,
    )
    tools_result = types.ServerResult(types.ListToolsResult(tools=[build_tool()]))

    async def list_tools(_: types.ListToolsRequest | None) -> types.ServerResult:
        return tools_result

    async def call_tool(req: types.CallToolRequest) -> types.ServerResult:
        request = None
        if caller_key is not None:
            try:
                request = server.request_context.request
            except LookupError:
                request = None
        return await tool(req.params, request)

    server.request_handlers[types.ListToolsRequest] = list_tools
    server.request_handlers[types.CallToolRequest] = call_tool
    server.tool = tool  # type: ignore[attr-defined]
    return server
