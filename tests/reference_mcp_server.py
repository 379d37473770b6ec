"""A bare mcp 2.x low-level server with one tool, `store_credential`: the reference that the
external clients (MCP Inspector CLI, conformance suite) are first proven against.

Nothing of danube-mcp is imported: it shows what the SDK alone does, so a scenario that fails
here as well fails because of the SDK or the scenario, not because of danube-mcp.

    python tests/reference_mcp_server.py                       # stdio (both eras)
    python tests/reference_mcp_server.py --transport http --port 0
        # streamable HTTP at /mcp (both eras) and legacy SSE at /sse + /messages/;
        # prints "reference-mcp: listening on http://127.0.0.1:PORT (/mcp and /sse)" on stderr

A stored credential is appended as one JSON line to the file named by REFERENCE_MCP_STORE (a test
stand-in for the sandbox database), so a test can check that a call really stored the value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.runner import serve_loop
from mcp.server.sse import SseServerTransport
from mcp.server.stdio import stdio_server
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

PROG = "reference-mcp"
STORE_ENV = "REFERENCE_MCP_STORE"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "service_id": {"type": "string", "minLength": 1},
        "credential_type": {"type": "string", "enum": ["bearer", "api_key"]},
        "credential_value": {"type": "string", "minLength": 1, "writeOnly": True},
    },
    "required": ["service_id", "credential_type", "credential_value"],
    "additionalProperties": False,
}


async def _list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    tool = types.Tool(
        name="store_credential", description="Store a credential (reference).", input_schema=_SCHEMA
    )
    return types.ListToolsResult(tools=[tool])


async def _call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    args = params.arguments or {}
    if params.name != "store_credential":
        return types.CallToolResult(content=[types.TextContent(text="unknown tool")], is_error=True)
    fields = ("service_id", "credential_type", "credential_value")
    if not all(isinstance(args.get(k), str) and args[k] for k in fields):
        return types.CallToolResult(content=[types.TextContent(text="bad arguments")], is_error=True)
    path = os.environ.get(STORE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({k: args[k] for k in fields}) + "\n")
    out = {"success": True, "service_id": args["service_id"], "credential_type": args["credential_type"]}
    return types.CallToolResult(content=[types.TextContent(text=json.dumps(out))], structured_content=out)


def build() -> Server[Any]:
    return Server(PROG, version="1.0.0", on_list_tools=_list_tools, on_call_tool=_call_tool)


async def _serve_stdio() -> None:
    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def _serve_http(port: int) -> None:
    server = build()
    sse = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        send = request._send  # the SDK's documented way to hand the raw ASGI send over
        async with sse.connect_sse(request.scope, request.receive, send) as (read, write):
            await serve_loop(
                server, read, write, lifespan_state={}, init_options=server.create_initialization_options()
            )
        return Response()

    # A Mount is what the SDK's own SSE example uses; the parameter is typed for Routes only.
    routes: list[Any] = [
        Route("/sse", endpoint=handle_sse, methods=["GET"]),
        Mount("/messages/", app=sse.handle_post_message),
    ]
    app = server.streamable_http_app(custom_starlette_routes=routes)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    userver = uvicorn.Server(config)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(userver.serve)
            while not userver.started:
                if userver.should_exit:
                    return
                await anyio.sleep(0.01)  # uvicorn has no start-up event to wait on
            bound = userver.servers[0].sockets[0].getsockname()
            print(
                f"{PROG}: listening on http://127.0.0.1:{bound[1]} (/mcp and /sse)",
                file=sys.stderr,
                flush=True,
            )

    anyio.run(main)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG)
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    if args.transport == "stdio":
        anyio.run(_serve_stdio)
    else:
        _serve_http(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
