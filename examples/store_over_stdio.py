"""Agent code: start danube-mcp over stdio and store a credential through the MCP client."""

import asyncio
import os
import sys

from mcp import Client, StdioServerParameters
from mcp.types import TextContent


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
    async with Client(server) as client:
        result = await client.call_tool(
            "store_credential",
            {
                "service_id": "svc_openai_001",
                "credential_type": "bearer",
                "credential_value": os.environ["OPENAI_API_KEY"],
            },
        )
    if result.is_error:  # after the client has closed: a clean exit, not a traceback
        raise SystemExit(" ".join(c.text for c in result.content if isinstance(c, TextContent)))
    print(result.structured_content)


if __name__ == "__main__":
    asyncio.run(main())
