"""Command line: flags and environment, logging, then one transport.

Start-up problems are one line on stderr and exit code 2. stdout is never written to, except by
``--version`` and the ``--self-test`` report, which do not speak MCP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
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
# Subcommands with their own modules and flags; see danube_mcp.commands.
COMMANDS = ("login", "logout", "store")

PORT_PROBLEM = "must be a whole number from 0 to 65535 (0 picks a free port)"
TRANSPORT_PROBLEM = f"must be one of {', '.join(TRANSPORTS)}"
# argparse details that carry no value of the user's; every other detail is replaced.
_SAFE_DETAILS = frozenset({PORT_PROBLEM, TRANSPORT_PROBLEM})
# Only names shaped like this program's own flags (lowercase words and dashes, short) are repeated
# in an error; anything else might be a pasted secret.
_FLAG_NAME = re.compile(r"--[a-z][a-z-]{0,24}")

DESCRIPTION = """\
MCP server with one tool, store_credential: it stores an API key or bearer
token in Danube's credential store. An MCP host (Claude Desktop, an IDE)
starts it and speaks MCP on stdin/stdout; teams can also serve it over HTTP.

commands (each has its own --help):
  login     sign in to Danube in the browser and keep the API key for the
            server in a file only you can read
  logout    forget the key that login kept
  store     store a credential in Danube from the terminal

Danube settings (environment only):
  DANUBE_API_KEY      your Danube API key
  DANUBE_API_URL      API base address, no path (default
                      https://api.danubeai.com); alias DANUBE_BASE_URL
  DANUBE_ORG_ID       organisation, sent as the danube-org-id header
  DANUBE_TIMEOUT      seconds per request (default 15)
  DANUBE_MAX_RETRIES  retries after a failed request (default 2)"""

EPILOG = """\
examples:
  danube-mcp --self-test --sandbox
      try it on this machine: a local test store, nothing goes to Danube
  DANUBE_API_KEY=... danube-mcp --self-test
      check the set-up against Danube line by line, storing nothing
  danube-mcp --transport streamable-http --port 8000
      serve MCP over HTTP at http://127.0.0.1:8000/mcp"""


def _port(raw: str) -> int:
    try:
        port = int(raw.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(PORT_PROBLEM) from None
    if not 0 <= port <= 65535 or not raw.strip().isascii():
        raise argparse.ArgumentTypeError(PORT_PROBLEM)
    return port


def _transport(raw: str) -> str:
    if raw not in TRANSPORTS:
        raise argparse.ArgumentTypeError(TRANSPORT_PROBLEM)
    return raw


def _flag_name(token: str) -> str | None:
    name = token.split("=", 1)[0]
    return name if _FLAG_NAME.fullmatch(name) else None


class _Parser(argparse.ArgumentParser):
    """Errors are one line, exit 2, and never repeat a value from the command line: a mistyped
    flag (``--api-key=...``, ``--token ...``) would otherwise put a secret on stderr, where hosts
    keep it in their log files."""

    def error(self, message: str) -> Any:
        m = re.fullmatch(r"argument ([^:\s]+): (.*)", message, re.S)
        if m is None:
            text = "invalid command line"
        else:
            flag, detail = m.group(1).split("/")[-1], m.group(2)
            if detail == "expected one argument":
                text = f"{flag} needs a value"
            elif detail in _SAFE_DETAILS:
                text = f"{flag} {detail}"
            elif detail.startswith("ignored explicit argument"):
                text = f"{flag} takes no value"
            else:
                text = f"{flag} has an invalid value"
        self.exit(2, f"danube-mcp: {text} (see danube-mcp --help)\n")

    def parse_strict(self, argv: Sequence[str]) -> argparse.Namespace:
        """Like ``parse_args``, but an unknown argument is reported by its flag name only."""
        args, unknown = self.parse_known_args(argv)
        if unknown:
            names = [n for n in (_flag_name(t) for t in unknown if t.startswith("-")) if n]
            if names:
                import difflib

                known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
                hint = difflib.get_close_matches(names[0], known, n=1)
                also = f" (did you mean {hint[0]}?)" if hint else ""
                text = f"unknown option {', '.join(dict.fromkeys(names))}{also}"
            elif any(t.startswith("-") for t in unknown):
                text = "unknown option"
            else:
                text = f"unexpected argument; the commands are {', '.join(COMMANDS)}"
            self.exit(2, f"danube-mcp: {text} (see danube-mcp --help)\n")
        return args


def build_parser() -> _Parser:
    p = _Parser(
        prog="danube-mcp",
        usage="danube-mcp [options]\n       danube-mcp {login,logout,store} [command options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an abbreviation would take a value meant for another flag
    )
    p.add_argument("--version", action="version", version=f"danube-mcp {__version__}")

    mode = p.add_argument_group("server")
    mode.add_argument(
        "--sandbox",
        action="store_true",
        default=None,
        help="store credentials in a local encrypted test database instead of Danube (no key "
        "needed); env DANUBE_MCP_SANDBOX=1",
    )
    mode.add_argument(
        "--sandbox-db",
        metavar="PATH",
        default=None,
        help="database file for --sandbox (default in your data folder); env DANUBE_MCP_SANDBOX_DB",
    )
    mode.add_argument(
        "--secure-input",
        action="store_true",
        default=None,
        help="let users type the credential on a private page instead of in the chat "
        "(URL-mode elicitation); env DANUBE_MCP_SECURE_INPUT=1",
    )
    mode.add_argument(
        "--self-test",
        action="store_true",
        help="check the set-up line by line (address, TLS, the API key) without storing anything, "
        "then exit: 0 if every check passed; with --sandbox, store a demo credential locally "
        "(command line only, no environment variable)",
    )
    mode.add_argument(
        "--log-level",
        metavar="LEVEL",
        default=None,
        help="DEBUG, INFO, WARNING (default) or ERROR; logs go to stderr; env DANUBE_MCP_LOG_LEVEL",
    )

    http = p.add_argument_group("HTTP transports (default: stdio)")
    http.add_argument(
        "--transport",
        type=_transport,
        metavar="{" + ",".join(TRANSPORTS) + "}",
        default=None,
        help="stdio (default), streamable-http (/mcp), sse (/sse + /messages/), or http (both); "
        "env DANUBE_MCP_TRANSPORT",
    )
    http.add_argument(
        "--host", default=None, help="address to listen on (default 127.0.0.1); env DANUBE_MCP_HOST"
    )
    http.add_argument(
        "--port",
        type=_port,
        default=None,
        help="port from 0 to 65535 (default 8000, 0 = any free port); env DANUBE_MCP_PORT",
    )
    http.add_argument(
        "--stateless",
        action="store_true",
        default=None,
        help="stateless streamable HTTP (no sessions); env DANUBE_MCP_STATELESS=1",
    )
    http.add_argument(
        "--json-response",
        action="store_true",
        default=None,
        help="plain JSON answers instead of SSE streams on /mcp; env DANUBE_MCP_JSON_RESPONSE=1",
    )

    security = p.add_argument_group("HTTP security")
    security.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="HOST[:PORT]",
        help="extra Host header value to accept (repeatable); env DANUBE_MCP_ALLOWED_HOSTS (comma-separated)",
    )
    security.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="extra Origin to accept (repeatable); env DANUBE_MCP_ALLOWED_ORIGINS (comma-separated)",
    )
    security.add_argument(
        "--auth-token-file",
        default=None,
        metavar="PATH",
        help="file holding the access token clients must send as 'Authorization: Bearer'; "
        "env DANUBE_MCP_AUTH_TOKEN_FILE, or the token itself in DANUBE_MCP_AUTH_TOKEN",
    )
    security.add_argument(
        "--require-client-key",
        action="store_true",
        default=None,
        help="every caller must send its own danube-api-key header; the server's key is never "
        "used; env DANUBE_MCP_REQUIRE_CLIENT_KEY=1",
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
        listeners = None
        if http_opts is not None:
            from danube_mcp.transports.bind import bind_listeners

            try:
                listeners = bind_listeners(http_opts.host, http_opts.port)
            except ConfigError as exc:
                print(f"danube-mcp: {exc}", file=sys.stderr)
                return 2
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
