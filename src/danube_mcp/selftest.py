"""``danube-mcp --self-test``: check the set-up line by line and print a report on stdout.

With ``--sandbox`` it starts the server as a child over stdio and stores a demo credential in the
local test store. Without it, nothing is ever stored (a self-test must not write to a real
account); instead each step a call takes is checked on its own, in order:

    address → name resolution → TCP connect → TLS → answers like Danube → the API key
    → the server itself (a child over stdio: initialize, tools/list)

Every line says OK, FAILED (why) or NOT CHECKED (why). OK is printed only for what was actually
verified; a step that cannot run because an earlier one failed is NOT CHECKED. The exit code is
0 only when every check that applies passed. The key is sent only in a read-only request
(``GET /v1/api-keys``), only to an address that answers like Danube, never over a redirect, and
never appears in the report (its last four characters at most).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from danube_mcp import __version__
from danube_mcp.config import Settings, load_settings
from danube_mcp.danube.redact import key_tail
from danube_mcp.selftest_checks import FAILED, NOT_CHECKED, OK, Report, check_danube, report_line

DEMO_ARGUMENTS = {
    "service_id": "svc_openai_001",
    "credential_type": "bearer",
    "credential_value": "sandbox-demo-credential-value",
}
TIMEOUT = 30.0  # the whole stdio part


def mask(secret: str | None) -> str:
    """Enough to recognise a key, never enough to use it."""
    if not secret:
        return "missing"
    return f"present (****{key_tail(secret) or ''}, {len(secret)} characters)"


# --------------------------------------------------------------------------------------------
# The server itself, as a child over stdio


async def _run(sandbox: bool, sandbox_db: str | None, log_level: str, out: list[str]) -> bool:
    import anyio
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
                    out.append(report_line("server", f"{init.server_info.name} {init.server_info.version}"))
                    out.append(report_line("protocol version", init.protocol_version))
                    tools = (await session.list_tools()).tools
                    found = any(t.name == "store_credential" for t in tools)
                    out.append(report_line("tool", f"store_credential {'found' if found else 'MISSING'}"))
                    ok = ok and found
                    if sandbox and found:
                        result = await session.call_tool("store_credential", DEMO_ARGUMENTS)
                        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
                        if result.is_error:
                            out.append(report_line("demo store", f"FAILED: {text}"))
                            ok = False
                        else:
                            out.append(report_line("demo store", text))
                            out.append(report_line("structured result", _format(result.structured_content)))
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


def _header(report: Report, sandbox: bool) -> None:
    report.say(f"danube-mcp {__version__} self-test")
    mode = "SANDBOX (local test store, nothing goes to Danube)" if sandbox else "Danube"
    report.say(report_line("mode", mode))


def report_settings_problem(problem: str) -> int:
    """The settings themselves are invalid: say so as a failed check, exit 1."""
    report = Report(None)
    _header(report, False)
    report.add("settings", FAILED, problem)
    report.say(report_line("other checks", f"{NOT_CHECKED} (fix the setting above first)"))
    report.say(report_line("result", FAILED))
    return 1


def run_self_test(
    *, sandbox: bool, sandbox_db: str | None, log_level: str, settings: Settings | None = None
) -> int:
    import anyio

    settings = settings or load_settings()
    key = settings.api_key.get_secret_value() if settings.api_key else None
    report = Report(key)
    _header(report, sandbox)
    out: list[str] = []
    if sandbox:
        ok = anyio.run(_run, sandbox, sandbox_db, log_level, out)
        for text in out:
            report.say(text)
        report.say(report_line("result", OK if ok else FAILED))
        return 0 if ok else 1

    report.say(report_line("Danube API", settings.api_url))
    problem = "" if key else f" (DANUBE_API_KEY is {settings.api_key_problem})"
    report.say(report_line("key in use", f"{mask(key)}{problem}"))
    check_danube(report, settings, key)
    ok = anyio.run(_run, sandbox, sandbox_db, log_level, out)
    if ok:
        summary = (" ".join(part.strip() for part in text.split(":", 1)) for text in out)
        report.add("server over stdio", OK, ", ".join(summary))
    else:
        report.add("server over stdio", FAILED, "the server did not start or answer; its last lines follow")
        for text in out:
            report.say(text)
    report.say(report_line("note", "nothing was stored (the self-test stores only with --sandbox)"))
    failed = sum(c.status == FAILED for c in report.checks)
    unchecked = sum(c.status == NOT_CHECKED and c.applies for c in report.checks)
    if report.passed():
        report.say(report_line("result", OK))
        return 0
    report.say(report_line("result", f"{FAILED} ({failed} failed, {unchecked} not checked)"))
    return 1
