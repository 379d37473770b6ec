"""The argument parser of ``danube-mcp``: grouped flags that each name their environment
variable, help and version on stdout, and errors that are one line, exit 2, and never repeat a
value from the command line (a mistyped flag often carries a secret).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from danube_mcp import __version__

TRANSPORTS = ("stdio", "streamable-http", "sse", "http")
# Subcommands with their own modules and flags; see danube_mcp.commands.
COMMANDS = ("login", "logout", "store")

PORT_PROBLEM = "must be a whole number from 0 to 65535 (0 picks a free port)"
TRANSPORT_PROBLEM = f"must be one of {', '.join(TRANSPORTS)}"
MAX_CONNECTIONS_PROBLEM = "must be a whole number from 1 to 1000000"
READ_TIMEOUT_PROBLEM = "must be a number of seconds from 0.1 to 3600"
# argparse details that carry no value of the user's; every other detail is replaced.
_SAFE_DETAILS = frozenset({PORT_PROBLEM, TRANSPORT_PROBLEM, MAX_CONNECTIONS_PROBLEM, READ_TIMEOUT_PROBLEM})
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


def _max_connections(raw: str) -> int:
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1_000_000:
        raise argparse.ArgumentTypeError(MAX_CONNECTIONS_PROBLEM)
    return int(text)


def _seconds(raw: str) -> float:
    text = raw.strip()
    try:
        value = float(text) if text.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(READ_TIMEOUT_PROBLEM)
    return value


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
    security.add_argument(
        "--max-connections",
        type=_max_connections,
        default=None,
        metavar="N",
        help="open client connections at most; more are answered 503 and closed (default 2000, "
        "lowered to what the open-files limit allows); env DANUBE_MCP_MAX_CONNECTIONS",
    )
    security.add_argument(
        "--read-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="time a client has to send a whole request, headers and body, before the connection "
        "is closed (default 10); env DANUBE_MCP_READ_TIMEOUT",
    )

    shared = p.add_argument_group("shared state (several processes behind a load balancer)")
    shared.add_argument(
        "--state-url",
        default=None,
        metavar="URL",
        help="redis://HOST:PORT/DB or rediss:// (TLS): keep pending secure input in Redis so any "
        "process can serve any request; put a password in the environment variable, not here; "
        "env DANUBE_MCP_STATE_URL",
    )
    shared.add_argument(
        "--state-key-file",
        default=None,
        metavar="PATH",
        help="file (mode 0600) with the random secret every process shares (at least 32 "
        "characters); env DANUBE_MCP_STATE_KEY_FILE, or the secret itself in DANUBE_MCP_STATE_KEY",
    )
    return p
