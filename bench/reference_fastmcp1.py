"""Second yardstick: the obvious FastMCP server for ``store_credential`` on mcp 1.x (1.30), with SDK defaults.

Runs only under an interpreter that has mcp 1.x and httpx installed (not the project's venv, which has
mcp 2.x): e.g. ``python -m venv /path/venv130 && /path/venv130/bin/pip install "mcp==1.30.0"``, then pass
``--fastmcp1-python /path/venv130/bin/python`` to ``cold_start.py`` or ``run_all.py``.

stdio by default; ``--transport streamable-http --port 0`` serves ``/mcp`` through uvicorn and prints
``listening on http://127.0.0.1:PORT`` on stderr once bound. Reads ``DANUBE_API_URL`` and ``DANUBE_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Literal

import httpx
import uvicorn
from mcp.server.fastmcp import FastMCP
from pydantic import BaseModel


class StoreResult(BaseModel):
    success: bool
    service_id: str
    service_name: str
    credential_type: str


mcp = FastMCP("danube-reference")
_client: httpx.AsyncClient | None = None


def upstream() -> httpx.AsyncClient:
    """One process-wide client, created on first use."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            base_url=os.environ.get("DANUBE_API_URL", "https://api.danubeai.com"),
            headers={"danube-api-key": os.environ.get("DANUBE_API_KEY", "")},
            timeout=30.0,
        )
    return _client


@mcp.tool()
async def store_credential(
    service_id: str, credential_type: Literal["bearer", "api_key"], credential_value: str
) -> StoreResult:
    """Store a credential (bearer token or API key) for a Danube service."""
    body = {
        "service_id": service_id,
        "credential_type": credential_type,
        "credential_value": credential_value,
    }
    resp = await upstream().post("/v1/credentials/store", json=body)
    resp.raise_for_status()
    return StoreResult.model_validate(resp.json())


async def serve_http(host: str, port: int) -> None:
    server = uvicorn.Server(
        uvicorn.Config(mcp.streamable_http_app(), host=host, port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()
        print(f"listening on http://{bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description="reference FastMCP server for benchmarks")
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if args.transport == "stdio":
        mcp.run("stdio")
    else:
        asyncio.run(serve_http(args.host, args.port))


if __name__ == "__main__":
    main()
