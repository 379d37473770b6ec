"""Agent code: start danube-mcp over stdio and store a credential through the MCP client."""

import asyncio
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


async def main() -> None:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "danube_mcp"],
        # Only these variables reach the server: the SDK does not pass your whole environment.
        env={
            "DANUBE_API_KEY": os.environ["DANUBE_API_KEY"],
            "DANUBE_API_URL": os.environ.get("DANUBE_API_URL", "https://api.danubeai.com"),
        },
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool(
            "store_credential",
            {
                "service_id": "svc_openai_001",
                "credential_type": "bearer",
                "credential_value": os.environ["OPENAI_API_KEY"],
            },
        )
        if result.isError:
            raise SystemExit(result.content[0].text)
        print(result.structuredContent)


if __name__ == "__main__":
    asyncio.run(main())
