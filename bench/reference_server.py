"""The yardstick: a bare mcp 2.x low-level server for ``store_credential``, written the way the SDK's docs show.

``Server(..., on_list_tools=..., on_call_tool=...)`` served with ``mcp.server.stdio.stdio_server``; one lazily
created process-wide ``httpx2.AsyncClient``; SDK defaults everywhere else. stdio by default;
``--transport streamable-http --port 0`` serves ``/mcp`` through uvicorn and prints
``listening on http://127.0.0.1:PORT`` on stderr once bound; ``--stateless`` and ``--json-response`` pass
``stateless_http=True`` / ``json_response=True`` to ``streamable_http_app`` (the SDK's stateless JSON mode;
2026-07-28 requests are served per request in every mode, JSON or SSE-capable). Reads ``DANUBE_API_URL`` and ``DANUBE_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio
import httpx2
import mcp.server.stdio
import mcp_types as types
from mcp.server import Server, ServerRequestContext

TOOL = types.Tool(
    name="store_credential",
    description="Store a credential (bearer token or API key) for a Danube service.",
    input_schema={
        "type": "object",
        "properties": {
            "service_id": {"type": "string"},
            "credential_type": {"type": "string", "enum": ["bearer", "api_key"]},
            "credential_value": {"type": "string"},
        },
        "required": ["service_id", "credential_type", "credential_value"],
    },
)

_client: httpx2.AsyncClient | None = None


def upstream() -> httpx2.AsyncClient:
    """One process-wide client, created on first use."""
    global _client
    if _client is None:
        _client = httpx2.AsyncClient(
            base_url=os.environ.get("DANUBE_API_URL", "https://api.danubeai.com"),
            headers={"danube-api-key": os.environ.get("DANUBE_API_KEY", "")},
            timeout=30.0,
        )
    return _client


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[TOOL])


async def call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    if params.name != "store_credential":
        raise ValueError(f"unknown tool: {params.name}")
    args = params.arguments or {}
    body = {k: args[k] for k in ("service_id", "credential_type", "credential_value")}
    resp = await upstream().post("/v1/credentials/store", json=body)
    resp.raise_for_status()
    data = resp.json()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(data))], structured_content=data
    )


server = Server("danube-reference", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    async with mcp.server.stdio.stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(host: str, port: int, stateless: bool = False, json_response: bool = False) -> None:
    import uvicorn

    app = server.streamable_http_app(host=host, stateless_http=stateless, json_response=json_response)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        while not uv.started:
            await anyio.sleep(0.01)
        bound = uv.servers[0].sockets[0].getsockname()
        print(f"listening on http://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="reference mcp 2.x low-level server for benchmarks")
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stateless", action="store_true", help="stateless_http=True (no sessions)")
    parser.add_argument("--json-response", action="store_true", help="json_response=True (no SSE)")
    args = parser.parse_args()
    if args.transport == "stdio":
        anyio.run(serve_stdio)
    else:
        anyio.run(serve_http, args.host, args.port, args.stateless, args.json_response)


if __name__ == "__main__":
    main()
