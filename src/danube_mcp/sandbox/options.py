"""``danube-sandbox`` options: flags, their ``DANUBE_SANDBOX_*`` variables, and the exposure rules.

A flag wins over its variable. Everything is validated here, before any file or socket is touched; a
problem is a :class:`StartupError` whose message is one line and never contains a key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from danube_mcp import __version__
from danube_mcp.config import ConfigError, is_loopback_host, is_placeholder, parse_bool
from danube_mcp.sandbox.constants import DEFAULT_HOST, DEFAULT_PORT, DEMO_API_KEY, KEY_ENV_VAR
from danube_mcp.sandbox.device import DEFAULT_INTERVAL, DEFAULT_TTL
from danube_mcp.sandbox.errors import SandboxError
from danube_mcp.sandbox.files import ensure_private_folder, read_private_text
from danube_mcp.sandbox.store import MEMORY

PROG = "danube-sandbox"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
EXIT_STARTUP_FAILURE = 2
EXIT_USAGE = EXIT_STARTUP_FAILURE

ENV_HOST = "DANUBE_SANDBOX_HOST"
ENV_PORT = "DANUBE_SANDBOX_PORT"
ENV_DB = "DANUBE_SANDBOX_DB"
ENV_API_KEYS = "DANUBE_SANDBOX_API_KEYS"
ENV_API_KEYS_FILE = "DANUBE_SANDBOX_API_KEYS_FILE"
ENV_SERVICES = "DANUBE_SANDBOX_SERVICES"
ENV_LOG_LEVEL = "DANUBE_SANDBOX_LOG_LEVEL"
ENV_ALLOWED_HOSTS = "DANUBE_SANDBOX_ALLOWED_HOSTS"
ENV_ALLOWED_ORIGINS = "DANUBE_SANDBOX_ALLOWED_ORIGINS"
ENV_ALLOW_PUBLIC_BIND = "DANUBE_SANDBOX_ALLOW_PUBLIC_BIND"
ENV_DEVICE_TTL = "DANUBE_SANDBOX_DEVICE_CODE_TTL"
ENV_DEVICE_INTERVAL = "DANUBE_SANDBOX_DEVICE_POLL_INTERVAL"

MAX_DEVICE_TTL = 86400
MAX_DEVICE_INTERVAL = 600


class StartupError(Exception):
    """A start-up problem: printed as one line ``danube-sandbox: error: ...``, exit status 2."""


def default_db_path(*, create_folder: bool = False) -> Path:
    """``$XDG_DATA_HOME/danube-mcp/sandbox.db``, else ``~/.local/share/danube-mcp/sandbox.db``.

    ``create_folder`` makes the folder (and missing parents) with mode 0700 when missing, as on a fresh
    machine; a problem is left for :func:`open_store` to report with its real cause."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    path = base / "danube-mcp" / "sandbox.db"
    if create_folder:
        with contextlib.suppress(SandboxError):
            ensure_private_folder(path.parent)
    return path


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line, and never echo a value (a mistyped ``--api-kee=SECRET``)."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            names = [
                token.split("=", 1)[0] for token in message[len(prefix) :].split() if token.startswith("-")
            ]
            message = (
                f"unrecognized option(s): {' '.join(names)}" if names else "unexpected extra argument(s)"
            )
        raise StartupError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="A local Danube-compatible credentials API for tests and demos. Values are encrypted"
        f" at rest with AES-256-GCM; the key comes from {KEY_ENV_VAR} or the private file <db>.key."
        " Every option can also be set by the environment variable named in its help; a flag wins.",
    )
    add = parser.add_argument
    add("--host", help=f"interface to bind (default: {DEFAULT_HOST}; env {ENV_HOST})")
    add("--port", help=f"port, 0 picks a free one (default: {DEFAULT_PORT}; env {ENV_PORT})")
    add("--db", help=f"SQLite database, or {MEMORY} (default: {default_db_path()}; env {ENV_DB})")
    add(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key to accept, repeatable. Visible in the process list: prefer"
        f" {ENV_API_KEYS} (comma-separated) or --api-keys-file. Without any key the public demo key"
        f" {DEMO_API_KEY} is accepted",
    )
    add(
        "--api-keys-file",
        metavar="FILE",
        help="file of API keys to accept, one per line (# comments); must be yours and mode 0600"
        f" (env {ENV_API_KEYS_FILE})",
    )
    add("--services", metavar="FILE.json", help=f"add or replace catalog entries (env {ENV_SERVICES})")
    add("--log-level", type=str.lower, choices=LOG_LEVELS, help=f"default: info (env {ENV_LOG_LEVEL})")
    add(
        "--allowed-host",
        action="append",
        metavar="HOST[:PORT]",
        help="a Host header to accept besides loopback names, repeatable; HOST:* for any port"
        f" (env {ENV_ALLOWED_HOSTS}, comma-separated)",
    )
    add(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser Origin to accept besides loopback ones, repeatable"
        f" (env {ENV_ALLOWED_ORIGINS}, comma-separated)",
    )
    add(
        "--allow-public-bind",
        action="store_true",
        default=None,
        help="allow a non-loopback --host; also needs your own keys (not the demo key) and"
        f" --allowed-host (env {ENV_ALLOW_PUBLIC_BIND}=1)",
    )
    add(
        "--device-code-ttl",
        metavar="SECONDS",
        help=f"lifetime of device-flow codes (default: {DEFAULT_TTL}; env {ENV_DEVICE_TTL})",
    )
    add(
        "--device-poll-interval",
        metavar="SECONDS",
        help=f"minimum seconds between device-flow polls (default: {DEFAULT_INTERVAL};"
        f" env {ENV_DEVICE_INTERVAL})",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


@dataclass
class Options:
    host: str
    port: int
    db: str | None
    api_keys: list[str] = field(repr=False)
    keys_on_command_line: bool
    services: str | None
    log_level: str
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    allow_public_bind: bool
    device_ttl: int
    device_interval: int


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value is not None and value.strip() else None


def _int_in_range(text: str, source: str, low: int, high: int) -> int:
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or not low <= int(stripped) <= high:
        raise StartupError(f"{source} must be an integer between {low} and {high}")
    return int(stripped)


def _pick_int(flag: str | None, flag_name: str, env: str, default: int, low: int, high: int) -> int:
    if flag is not None:
        return _int_in_range(flag, flag_name, low, high)
    raw = _env(env)
    return default if raw is None else _int_in_range(raw, env, low, high)


def _list(flag: list[str] | None, env: str) -> tuple[str, ...]:
    items = flag if flag else (_env(env) or "").split(",")
    return tuple(item.strip() for item in items if item.strip())


def _check_key(key: str, source: str) -> str:
    key = key.strip()
    if not key:
        raise StartupError(f"{source} must not be empty")
    if is_placeholder(key):
        raise StartupError(f"{source} holds an unsubstituted placeholder such as ${{...}}, not a key")
    if not key.isprintable() or not key.isascii():
        raise StartupError(f"{source} must hold printable ASCII keys (they travel in an HTTP header)")
    return key


def _api_keys(args: argparse.Namespace) -> list[str]:
    keys = [_check_key(key, "--api-key") for key in args.api_key]
    raw = os.environ.get(ENV_API_KEYS)
    if raw is not None and raw.strip():
        items = [item for item in raw.split(",") if item.strip()]
        keys += [_check_key(item, ENV_API_KEYS) for item in items]
    path = args.api_keys_file or _env(ENV_API_KEYS_FILE)
    if path:
        source = "--api-keys-file" if args.api_keys_file else ENV_API_KEYS_FILE
        try:
            text = read_private_text(path, "API-keys file", max_bytes=1 << 20)
        except SandboxError as exc:
            raise StartupError(f"{source}: {exc}") from None
        lines = [line.strip() for line in text.splitlines()]
        from_file = [
            _check_key(line, f"{source} {path}") for line in lines if line and not line.startswith("#")
        ]
        if not from_file:
            raise StartupError(f"{source} {path} holds no key")
        keys += from_file
    return list(dict.fromkeys(keys)) or [DEMO_API_KEY]


def resolve_options(args: argparse.Namespace) -> Options:
    """Flags first, then ``DANUBE_SANDBOX_*`` variables; refuses unsafe exposures. No file is created."""
    try:
        allow_public = (
            args.allow_public_bind
            if args.allow_public_bind is not None
            else parse_bool(os.environ.get(ENV_ALLOW_PUBLIC_BIND), ENV_ALLOW_PUBLIC_BIND)
        )
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    log_level = args.log_level or (_env(ENV_LOG_LEVEL) or "info").strip().lower()
    if log_level not in LOG_LEVELS:
        raise StartupError(f"{ENV_LOG_LEVEL} must be one of: {', '.join(LOG_LEVELS)}")
    options = Options(
        host=(args.host if args.host is not None else _env(ENV_HOST) or DEFAULT_HOST).strip(),
        port=_pick_int(args.port, "--port", ENV_PORT, DEFAULT_PORT, 0, 65535),
        db=args.db if args.db is not None else _env(ENV_DB),
        api_keys=_api_keys(args),
        keys_on_command_line=bool(args.api_key),
        services=args.services or _env(ENV_SERVICES),
        log_level=log_level,
        allowed_hosts=_list(args.allowed_host, ENV_ALLOWED_HOSTS),
        allowed_origins=_list(args.allowed_origin, ENV_ALLOWED_ORIGINS),
        allow_public_bind=allow_public,
        device_ttl=_pick_int(
            args.device_code_ttl, "--device-code-ttl", ENV_DEVICE_TTL, DEFAULT_TTL, 1, MAX_DEVICE_TTL
        ),
        device_interval=_pick_int(
            args.device_poll_interval,
            "--device-poll-interval",
            ENV_DEVICE_INTERVAL,
            DEFAULT_INTERVAL,
            0,
            MAX_DEVICE_INTERVAL,
        ),
    )
    if not options.host:
        raise StartupError("--host must not be empty")
    _check_exposure(options)
    return options


def _check_exposure(options: Options) -> None:
    """A non-loopback bind needs an explicit yes, keys of one's own and the host names clients use."""
    if is_loopback_host(options.host):
        return
    where = f"refusing to bind {options.host} (not a loopback address)"
    if not options.allow_public_bind:
        raise StartupError(
            f"{where}: the sandbox is a test server; to expose it anyway pass --allow-public-bind"
            f" ({ENV_ALLOW_PUBLIC_BIND}=1) with your own keys and --allowed-host"
        )
    if DEMO_API_KEY in options.api_keys:
        raise StartupError(
            f"{where} with the public demo key enabled: give your own keys with {ENV_API_KEYS} or"
            " --api-keys-file"
        )
    if not options.allowed_hosts:
        raise StartupError(
            f"{where} without --allowed-host ({ENV_ALLOWED_HOSTS}): name the host names clients use,"
            " so DNS-rebinding protection can stay on"
        )
