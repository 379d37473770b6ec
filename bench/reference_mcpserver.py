"""The second 2.x yardstick for HTTP: the obvious ``MCPServer`` (the 2.x successor of FastMCP) server.

About twenty lines as the SDK's docs show them: a typed ``@mcp.tool()`` function that forwards to the upstream
through one lazily created process-wide ``httpx2.AsyncClient`` and returns the upstream's JSON object (so MCPServer
produces text + structured content itself), served with ``mcp.streamable_http_app(...)`` in uvicorn. SDK defaults
everywhere else. Only streamable HTTP: ``--transport streamable-http --port 0 [--stateless] [--json-response]``;
prints ``listening on http://127.0.0.1:PORT`` on stderr once bound. Reads ``DANUBE_API_URL`` and ``DANUBE_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Literal

import anyio
import httpx2
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("danube-reference-mcpserver", log_level="WARNING")

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


@mcp.tool()
async def store_credential(
    service_id: str, credential_type: Literal["bearer", "api_key"], credential_value: str
) -> dict[str, Any]:
    """Store a credential (bearer token or API key) for a Danube service."""
    body = {
        "service_id": service_id,
        "credential_type": credential_type,
        "credential_value": credential_value,
    }
    resp = await upstream().post("/v1/credentials/store", json=body)
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


async def serve_http(host: str, port: int, stateless: bool, json_response: bool) -> None:
    import uvicorn

    app = mcp.streamable_http_app(host=host, stateless_http=stateless, json_response=json_response)
    uv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        while not uv.started:
            await anyio.sleep(0.01)
        bound = uv.servers[0].sockets[0].getsockname()
        print(f"listening on http://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="reference mcp 2.x MCPServer server for benchmarks")
    parser.add_argument("--transport", choices=["streamable-http"], default="streamable-http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stateless", action="store_true", help="stateless_http=True (no sessions)")
    parser.add_argument("--json-response", action="store_true", help="json_response=True (no SSE)")
    args = parser.parse_args()
    anyio.run(serve_http, args.host, args.port, args.stateless, args.json_response)


if __name__ == "__main__":
    main()
