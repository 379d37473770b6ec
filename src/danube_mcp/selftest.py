"""``danube-mcp --self-test``: start the server as a child over stdio, check it, print a report.

The report goes to stdout (this mode does not speak MCP). Without ``--sandbox`` nothing is ever
stored: a self-test must not write to a real account.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import anyio

from danube_mcp import __version__
from danube_mcp.config import load_settings
from danube_mcp.danube.redact import key_tail

DEMO_ARGUMENTS = {
    "service_id": "svc_openai_001",
    "credential_type": "bearer",
    "credential_value": "sandbox-demo-credential-value",
}
TIMEOUT = 30.0


def mask(secret: str | None) -> str:
    """Enough to recognise a key, never enough to use it."""
    if not secret:
        return "missing"
    return f"present (****{key_tail(secret) or ''}, {len(secret)} characters)"


async def _run(sandbox: bool, sandbox_db: str | None, log_level: str, out: list[str]) -> bool:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    args = ["-m", "danube_mcp", "--log-level", log_level]
    if sandbox:
        args.append("--sandbox")
        if sandbox_db:
            args += ["--sandbox-db", sandbox_db]
    params = StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))
    ok = True
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as errlog:
        try:
            with anyio.fail_after(TIMEOUT):
                async with (
                    stdio_client(params, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    init = await session.initialize()
                    out.append(f"server:            {init.server_info.name} {init.server_info.version}")
                    out.append(f"protocol version:  {init.protocol_version}")
                    tools = (await session.list_tools()).tools
                    found = any(t.name == "store_credential" for t in tools)
                    out.append(f"tool:              store_credential {'found' if found else 'MISSING'}")
                    ok = ok and found
                    if sandbox and found:
                        result = await session.call_tool("store_credential", DEMO_ARGUMENTS)
                        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                        if result.is_error:
                            out.append(f"demo store:        FAILED: {text}")
                            ok = False
                        else:
                            out.append(f"demo store:        {text}")
                            out.append(f"structured result: {_format(result.structured_content)}")
        except Exception as exc:  # report, never a traceback
            out.append(f"self-test failed: could not talk to the server ({type(exc).__name__})")
            errlog.seek(0)
            tail = errlog.read().strip().splitlines()[-5:]
            out.extend(f"  server stderr: {line}" for line in tail)
            return False
    return ok


def _format(data: Any) -> str:
    if not isinstance(data, dict):
        return repr(data)
    return ", ".join(f"{k}={v!r}" for k, v in data.items())


def run_self_test(*, sandbox: bool, sandbox_db: str | None, log_level: str) -> int:
    settings = load_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else None
    out = [f"danube-mcp {__version__} self-test"]
    out.append(
        f"mode:              {'SANDBOX (local test store, nothing goes to Danube)' if sandbox else 'Danube'}"
    )
    if not sandbox:
        out.append(f"Danube API:        {settings.api_url}")
        problem = "" if key else f" (DANUBE_API_KEY is {settings.api_key_problem})"
        out.append(f"API key:           {mask(key)}{problem}")
    ok = anyio.run(_run, sandbox, sandbox_db, log_level, out)
    if not sandbox:
        out.append("note:              nothing was stored (the self-test stores only with --sandbox)")
        ok = ok and key is not None
    out.append("result:            OK" if ok else "result:            FAILED")
    print("\n".join(out), flush=True)
    return 0 if ok else 1
