"""Tests: build the server in-process against a fake Danube, no subprocess and no network."""

import asyncio
import json

import httpx2
from mcp import Client

from danube_mcp.danube.client import DanubeClient
from danube_mcp.tool.handler import build_server


def fake_danube(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    return httpx2.Response(
        200,
        json={
            "success": True,
            "service_id": body["service_id"],
            "service_name": "OpenAI",
            "credential_type": body["credential_type"],
        },
    )


async def main() -> None:
    danube = DanubeClient(
        base_url="https://api.danubeai.com",
        api_key="test-key",
        transport=httpx2.MockTransport(fake_danube),
    )
    server, _ = build_server(danube)
    async with danube, Client(server) as client:
        result = await client.call_tool(
            "store_credential",
            {"service_id": "svc_openai_001", "credential_type": "api_key", "credential_value": "sk-test"},
        )
        assert not result.is_error
        print(result.structured_content)


if __name__ == "__main__":
    asyncio.run(main())
