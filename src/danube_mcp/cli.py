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
from typing import TYPE_CHECKING, BinaryIO

from danube_mcp.cli_parser import COMMANDS, TRANSPORT_PROBLEM, TRANSPORTS, build_parser

if TYPE_CHECKING:
    from danube_mcp.backend import Backend
    from danube_mcp.config import Settings
    from danube_mcp.danube.tls import TrustRoots
    from danube_mcp.transports.fast_start import Handoff

logger = logging.getLogger("danube_mcp")

__all__ = ["COMMANDS", "TRANSPORTS", "build_parser", "main"]


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


async def serve_stdio(
    opts: RunOptions, backend: Backend, handoff: Handoff | None = None, protocol_out: BinaryIO | None = None
) -> None:
    from danube_mcp.secure_input import SecureInputBroker
    from danube_mcp.tool.handler import build_server
    from danube_mcp.transports import stdio

    if protocol_out is None:
        protocol_out = stdio.claim_stdout()
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
            read, write = await stack.enter_async_context(
                stdio.stdio_transport(stdout=protocol_out, handoff=handoff)
            )
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


TTY_NOTE = """\
danube-mcp: this is an MCP server: it speaks MCP (JSON-RPC) on stdin/stdout and is meant to be
  started by an MCP host (Claude Desktop, an IDE), so it now waits quietly for one.
  To try it by hand:  danube-mcp --self-test --sandbox
  or in a browser:    npx @modelcontextprotocol/inspector danube-mcp --sandbox
  Waiting for MCP messages on stdin; Ctrl+D or Ctrl+C ends it."""


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (OSError, ValueError):
        return False


def _http_key_note(opts: RunOptions, require_client_key: bool) -> str | None:
    """Over HTTP without a server key, every caller brings its own: say so once at start."""
    if opts.sandbox or opts.settings.api_key is not None or require_client_key:
        return None
    return (
        f"danube-mcp: note: DANUBE_API_KEY is {opts.settings.api_key_problem}, so every caller must "
        "send its own Danube API key in the danube-api-key header (set DANUBE_API_KEY to serve "
        "callers without one, or --require-client-key to make this the rule and silence this note)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from danube_mcp.hardening import disable_core_dumps

    disable_core_dumps()  # before any secret is read: a core file would hold them all
    arg_list = list(sys.argv[1:] if argv is None else argv)
    if arg_list and arg_list[0] in COMMANDS:
        from danube_mcp.commands import dispatch

        return dispatch(arg_list[0], arg_list[1:])
    args = build_parser().parse_strict(arg_list)
    tls = None
    # The stdio command loads the trust roots on its loading thread instead (stdio_start.py), so
    # that nothing delays the first answer.
    stdio = (args.transport or os.environ.get("DANUBE_MCP_TRANSPORT", "").strip() or "stdio") == "stdio"
    if not (args.sandbox or args.self_test or (stdio and argv is None)):
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
        if args.self_test:
            from danube_mcp.selftest import report_settings_problem

            return report_settings_problem(str(exc))
        print(f"danube-mcp: {exc}", file=sys.stderr)
        return 2
    if args.sandbox_db is not None and not opts.sandbox:
        print(
            "danube-mcp: --sandbox-db needs --sandbox (or DANUBE_MCP_SANDBOX=1); "
            "without it credentials go to Danube",
            file=sys.stderr,
        )
        return 2

    from danube_mcp.logs import SECRETS, setup_logging

    setup_logging(opts.log_level)
    if opts.settings.api_key is not None:
        SECRETS.add(opts.settings.api_key.get_secret_value())

    if args.self_test:
        from danube_mcp.selftest import run_self_test

        return run_self_test(
            sandbox=opts.sandbox, sandbox_db=opts.sandbox_db, log_level=opts.log_level, settings=opts.settings
        )

    transport = args.transport or os.environ.get("DANUBE_MCP_TRANSPORT", "").strip() or "stdio"
    if transport not in TRANSPORTS:
        print(f"danube-mcp: DANUBE_MCP_TRANSPORT {TRANSPORT_PROBLEM}", file=sys.stderr)
        return 2

    try:
        http_opts = None
        if transport != "stdio":
            from danube_mcp.transports.http_options import HttpOptions

            try:
                http_opts = HttpOptions.resolve(args, transport, opts.settings, sandbox=opts.sandbox)
                if http_opts.shared_state is not None:
                    http_opts.shared_state.check_reachable()
            except ConfigError as exc:
                print(f"danube-mcp: {exc}", file=sys.stderr)
                return 2
        if http_opts is None and (
            getattr(args, "state_url", None) or os.environ.get("DANUBE_MCP_STATE_URL", "").strip()
        ):
            # Shared state is for several HTTP processes; one stdio process keeps its own.
            print(
                "danube-mcp: note: DANUBE_MCP_STATE_URL applies to the HTTP transports only; over "
                "stdio secure-input state stays in this process",
                file=sys.stderr,
            )
        listeners = None
        if http_opts is not None:
            from danube_mcp.transports.bind import bind_listeners

            try:
                listeners = bind_listeners(http_opts.host, http_opts.port)
            except ConfigError as exc:
                print(f"danube-mcp: {exc}", file=sys.stderr)
                return 2
        if http_opts is None and argv is None and opts.settings.fast_start:
            if _stdin_is_terminal():
                print(TTY_NOTE, file=sys.stderr, flush=True)
            from danube_mcp.stdio_start import run_stdio

            return run_stdio(opts)
        import anyio

        backend = open_process_backend(opts)
        if backend is None:
            return 2
        if http_opts is None:
            if _stdin_is_terminal():
                print(TTY_NOTE, file=sys.stderr, flush=True)
            anyio.run(serve_stdio, opts, backend)
            # Only for the real command, and never under a profiler, debugger or coverage tool,
            # which write their results at interpreter exit.
            if argv is None and sys.getprofile() is None and sys.gettrace() is None:
                _fast_exit(0)
            return 0
        from danube_mcp.transports.http import serve_http

        note = _http_key_note(opts, http_opts.require_client_key)
        if note:
            print(note, file=sys.stderr, flush=True)
        return serve_http(opts, http_opts, backend, listeners)
    except KeyboardInterrupt:
        return 130
