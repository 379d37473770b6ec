"""Command line: flags and environment, logging, then one transport.

Start-up problems are one line on stderr and exit code 2. stdout is never written to, except by
``--version`` and the ``--self-test`` report, which do not speak MCP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from danube_mcp import __version__

if TYPE_CHECKING:
    from danube_mcp.backend import Backend
    from danube_mcp.config import Settings
    from danube_mcp.danube.tls import TrustRoots

logger = logging.getLogger("danube_mcp")

TRANSPORTS = ("stdio", "streamable-http", "sse", "http")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, like every other start-up failure
        self.exit(2, f"danube-mcp: {message} (see danube-mcp --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="danube-mcp",
        description="MCP server exposing Danube's credential store as the store_credential tool. "
        "Danube settings come from the environment (DANUBE_API_KEY, DANUBE_API_URL, DANUBE_ORG_ID, "
        "DANUBE_TIMEOUT, DANUBE_MAX_RETRIES); see the README.",
    )
    p.add_argument("--version", action="version", version=f"danube-mcp {__version__}")
    p.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING (default) or ERROR; env DANUBE_MCP_LOG_LEVEL. Logs go to stderr.",
    )
    p.add_argument(
        "--sandbox",
        action="store_true",
        default=None,
        help="store credentials in a local encrypted test database instead of Danube (no key needed)",
    )
    p.add_argument("--sandbox-db", metavar="PATH", default=None, help="database file for --sandbox")
    p.add_argument(
        "--secure-input",
        action="store_true",
        default=None,
        help="let users type the credential on a private page instead of in the chat "
        "(URL-mode elicitation); env DANUBE_MCP_SECURE_INPUT",
    )
    p.add_argument(
        "--self-test",
        action="store_true",
        help="start the server as a child over stdio, check it, print a report and exit",
    )
    http = p.add_argument_group("HTTP transports")
    http.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=None,
        help="stdio (default), streamable-http (/mcp), sse (/sse + /messages/), or http (both); "
        "env DANUBE_MCP_TRANSPORT",
    )
    http.add_argument("--host", default=None, help="address to bind (default 127.0.0.1); env DANUBE_MCP_HOST")
    http.add_argument(
        "--port", type=int, default=None, help="port (default 8000, 0 = any); env DANUBE_MCP_PORT"
    )
    http.add_argument("--stateless", action="store_true", default=None, help="stateless streamable HTTP")
    http.add_argument(
        "--json-response", action="store_true", default=None, help="plain JSON answers for streamable HTTP"
    )
    http.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="HOST[:PORT]",
        help="extra Host header value to accept (repeatable); env DANUBE_MCP_ALLOWED_HOSTS (comma-separated)",
    )
    http.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="extra Origin to accept (repeatable); env DANUBE_MCP_ALLOWED_ORIGINS (comma-separated)",
    )
    http.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="file holding the access token clients must send as 'Authorization: Bearer'; "
        "or set DANUBE_MCP_AUTH_TOKEN",
    )
    http.add_argument(
        "--require-client-key",
        action="store_true",
        default=None,
        help="every caller must send its own danube-api-key header; the server's key is never used",
    )
    return p


@dataclass(frozen=True)
class RunOptions:
    settings: Settings
    log_level: str
    sandbox: bool
    sandbox_db: str | None
    secure_input: bool = False
    tls: TrustRoots | None = None


def resolve(args: argparse.Namespace, tls: TrustRoots | None = None) -> RunOptions:
    from danube_mcp.config import load_settings, parse_bool, parse_log_level

    settings = load_settings()
    log_level = (
        parse_log_level(args.log_level, "--log-level") if args.log_level is not None else settings.log_level
    )
    sandbox = (
        args.sandbox
        if args.sandbox is not None
        else parse_bool(os.environ.get("DANUBE_MCP_SANDBOX"), "DANUBE_MCP_SANDBOX")
    )
    sandbox_db = args.sandbox_db or os.environ.get("DANUBE_MCP_SANDBOX_DB") or None
    secure_input = args.secure_input if args.secure_input is not None else settings.secure_input
    return RunOptions(
        settings=settings,
        log_level=log_level,
        sandbox=sandbox,
        sandbox_db=sandbox_db,
        secure_input=secure_input,
        tls=tls,
    )


async def serve_stdio(opts: RunOptions, backend: Backend) -> None:
    from danube_mcp.secure_input import SecureInputBroker
    from danube_mcp.tool.handler import build_server
    from danube_mcp.transports.stdio import claim_stdout, stdio_transport

    protocol_out = claim_stdout()
    broker = SecureInputBroker(ttl=opts.settings.secure_input_ttl) if opts.secure_input else None
    try:
        server, _ = build_server(
            backend.client,
            sandbox=backend.sandbox,
            api_key_problem=backend.api_key_problem,
            secure_input=broker,
        )
        if not backend.sandbox and opts.settings.api_key is None:
            logger.warning(
                "DANUBE_API_KEY is %s: the tool is listed, but calls will fail until it is set",
                opts.settings.api_key_problem,
            )
        async with contextlib.AsyncExitStack() as stack:
            if broker is not None:
                await stack.enter_async_context(broker.running())
            read, write = await stack.enter_async_context(stdio_transport(stdout=protocol_out))
            await server.run(read, write, server.create_initialization_options())
    finally:
        await backend.aclose()


def open_process_backend(opts: RunOptions) -> Backend | None:
    """The process-wide Danube client, opened once for whichever transport runs. A sandbox whose
    database or key cannot be used is one clear line on stderr (and None), not a traceback."""
    from danube_mcp.backend import open_backend

    if not opts.sandbox:
        return open_backend(opts.settings, tls=opts.tls)
    from danube_mcp.sandbox import SandboxError

    try:
        return open_backend(opts.settings, sandbox=True, sandbox_db=opts.sandbox_db, tls=opts.tls)
    except SandboxError as exc:
        print(f"danube-mcp: {exc}", file=sys.stderr)
        return None


def _fast_exit(code: int) -> None:
    """End a stdio server at once after its clean shutdown.

    Everything that matters has been closed by then (the Danube client, the sandbox database, the
    protocol stream); what is left is the interpreter tearing down some 700 modules, which a host
    waiting for the process to exit would otherwise sit through.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tls = None
    if not (args.sandbox or args.self_test):
        from danube_mcp.config import DEFAULT_API_URL
        from danube_mcp.danube.tls import prefetch_for

        # Start loading TLS trust roots now, in parallel with the imports below.
        tls = prefetch_for(
            os.environ.get("DANUBE_API_URL") or os.environ.get("DANUBE_BASE_URL") or DEFAULT_API_URL
        )
    from danube_mcp.config import ConfigError

    try:
        opts = resolve(args, tls)
    except ConfigError as exc:
        print(f"danube-mcp: {exc}", file=sys.stderr)
        return 2

    from danube_mcp.logs import SECRETS, setup_logging

    setup_logging(opts.log_level)
    if opts.settings.api_key is not None:
        SECRETS.add(opts.settings.api_key.get_secret_value())

    if args.self_test:
        from danube_mcp.selftest import run_self_test

        return int(run_self_test(sandbox=opts.sandbox, sandbox_db=opts.sandbox_db, log_level=opts.log_level))

    transport = args.transport or os.environ.get("DANUBE_MCP_TRANSPORT", "").strip() or "stdio"
    if transport not in TRANSPORTS:
        print(f"danube-mcp: DANUBE_MCP_TRANSPORT must be one of {', '.join(TRANSPORTS)}", file=sys.stderr)
        return 2

    import anyio

    try:
        http_opts = None
        if transport != "stdio":
            from danube_mcp.transports.http_options import HttpOptions

            try:
                http_opts = HttpOptions.resolve(args, transport, opts.settings, sandbox=opts.sandbox)
            except ConfigError as exc:
                print(f"danube-mcp: {exc}", file=sys.stderr)
                return 2
        backend = open_process_backend(opts)
        if backend is None:
            return 2
        if http_opts is None:
            anyio.run(serve_stdio, opts, backend)
            # Only for the real command, and never under a profiler, debugger or coverage tool,
            # which write their results at interpreter exit.
            if argv is None and sys.getprofile() is None and sys.gettrace() is None:
                _fast_exit(0)
            return 0
        from danube_mcp.transports.http import serve_http

        return serve_http(opts, http_opts, backend)
    except KeyboardInterrupt:
        return 130
