"""``danube-sandbox``: serve the sandbox API with uvicorn. Writes only to stderr, never to stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from danube_mcp import __version__
from danube_mcp.sandbox.app import create_app
from danube_mcp.sandbox.catalog import CatalogError, build_catalog, load_services_file
from danube_mcp.sandbox.constants import DEFAULT_HOST, DEFAULT_PORT, DEMO_API_KEY, KEY_ENV_VAR
from danube_mcp.sandbox.errors import SandboxError
from danube_mcp.sandbox.store import MEMORY, open_store

PROG = "danube-sandbox"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
EXIT_USAGE = 2
EXIT_STARTUP_FAILURE = 1

log = logging.getLogger("danube_mcp.sandbox")


def default_db_path(*, create_folder: bool = False) -> Path:
    """``$XDG_DATA_HOME/danube-mcp/sandbox.db``, else ``~/.local/share/danube-mcp/sandbox.db``.

    ``create_folder`` makes the folder (mode 0700) when it is missing, as on a fresh machine; an
    explicit ``--db`` path is never created, so a typo fails loudly instead."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    path = base / "danube-mcp" / "sandbox.db"
    if create_folder:
        with contextlib.suppress(OSError):  # open_store reports an unusable location clearly
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class _StderrParser(argparse.ArgumentParser):
    """argparse prints help and version to stdout; this one never touches stdout."""

    def _print_message(self, message: str, file: Any = None) -> None:
        super()._print_message(message, sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = _StderrParser(
        prog=PROG,
        description="A local Danube-compatible credentials API for tests and demos. Values are encrypted"
        f" at rest with AES-256-GCM; the key comes from {KEY_ENV_VAR} or the file <db>.key.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port; 0 picks a free one (%(default)s)"
    )
    parser.add_argument("--db", help=f"SQLite database, or {MEMORY} (default: {default_db_path()})")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"an API key to accept (repeatable; default: the demo key {DEMO_API_KEY})",
    )
    parser.add_argument("--services", metavar="FILE.json", help="add or replace catalog entries")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


class _RedactKeys(logging.Filter):
    """Defence in depth: blank out any accepted API key that would reach a log line."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if len(secret) >= 4]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "[redacted]")
            record.msg, record.args = message, None
        return True


@contextmanager
def _logging_to_stderr(level: str, api_keys: Sequence[str]) -> Iterator[None]:
    """Log to stderr for the duration of ``main`` (and leave the root logger as it was afterwards)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactKeys(api_keys))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(level.upper())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return port


class _Server(uvicorn.Server):
    """Announces the real bound address on stderr once listening."""

    def __init__(self, config: uvicorn.Config, host: str) -> None:
        super().__init__(config)
        self._display_host = f"[{host}]" if ":" in host else host

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"{PROG}: listening on http://{self._display_host}:{port}", file=sys.stderr, flush=True)


@contextmanager
def _signals_to(server: _Server) -> Iterator[None]:
    """Route SIGINT/SIGTERM to a graceful shutdown, before uvicorn installs its handlers and after it
    restores ours (it re-raises the signal it caught then), so the process ends cleanly with status 0."""

    def handle(signum: int, frame: Any) -> None:
        server.handle_exit(signum, frame)

    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: already reported on stderr
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    api_keys: list[str] = args.api_key or [DEMO_API_KEY]
    if any(not key.strip() for key in api_keys):
        parser.print_usage()
        print(f"{PROG}: error: --api-key must not be empty", file=sys.stderr)
        return EXIT_USAGE
    with _logging_to_stderr(args.log_level, api_keys):
        return _run(args, api_keys)


def _run(args: argparse.Namespace, api_keys: list[str]) -> int:
    try:
        services = build_catalog(load_services_file(args.services) if args.services else ())
        if args.db is None:
            db_path = default_db_path()
            db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            db_path = args.db
        store = open_store(db_path)
    except (CatalogError, SandboxError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    try:
        app = create_app(store, api_keys=api_keys, services=services)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            log_level=args.log_level,
            access_log=False,
            lifespan="off",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = _Server(config, args.host)
        log.info("sandbox database: %s", db_path)
        with _signals_to(server):
            try:
                asyncio.run(server.serve())
            except SystemExit:  # uvicorn exits like this when it cannot bind; it logged why
                return EXIT_STARTUP_FAILURE
    finally:
        store.close()
    return 0
