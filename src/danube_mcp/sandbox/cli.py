"""``danube-sandbox``: serve the sandbox API with uvicorn.

Only ``--help`` and ``--version`` write to stdout; everything else goes to stderr. Every flag has a
``DANUBE_SANDBOX_*`` environment variable (see :mod:`danube_mcp.sandbox.options`). Start-up failures
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn

from danube_mcp.sandbox.app import create_app
from danube_mcp.sandbox.catalog import CatalogError, build_catalog, load_services_file
from danube_mcp.sandbox.device import DeviceFlow
from danube_mcp.sandbox.errors import SandboxError
from danube_mcp.sandbox.files import os_cause
from danube_mcp.sandbox.options import (
    ENV_API_KEYS,
    ENV_PORT,
    EXIT_STARTUP_FAILURE,
    EXIT_USAGE,
    PROG,
    Options,
    StartupError,
    build_parser,
    default_db_path,
    resolve_options,
)
from danube_mcp.sandbox.store import open_store
from danube_mcp.transports.http_options import Allowlist

__all__ = ["build_parser", "default_db_path", "main"]

log = logging.getLogger("danube_mcp.sandbox")


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


def _disable_core_dumps() -> None:
    """A core dump would hold the encryption key and the accepted API keys."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a busy port is one clear line rather than a traceback."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise StartupError(f"cannot bind --host {host}: the name does not resolve") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use: stop what uses it, or pick another with --port"
                f" ({ENV_PORT}); 0 picks a free one"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise StartupError(f"cannot bind {host}: no such address on this machine") from None
        if exc.errno == errno.EACCES:
            raise StartupError(f"cannot bind port {port} on {host}: permission denied") from None
        raise StartupError(f"cannot bind port {port} on {host}: {os_cause(exc)}") from None
    return sock


class _Server(uvicorn.Server):
    """Announces the real bound address on stderr once listening."""

    def __init__(self, config: uvicorn.Config, host: str) -> None:
        super().__init__(config)
        self._display_host = f"[{host}]" if ":" in host and not host.startswith("[") else host

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


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_STARTUP_FAILURE


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        options = resolve_options(args)
    except SystemExit as exc:  # --help and --version (on stdout)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except StartupError as exc:
        return _fail(str(exc))
    if options.keys_on_command_line:
        print(
            f"{PROG}: warning: --api-key is visible to other local users in the process list;"
            f" prefer {ENV_API_KEYS} or --api-keys-file",
            file=sys.stderr,
            flush=True,
        )
    _disable_core_dumps()
    with _logging_to_stderr(options.log_level, options.api_keys):
        return _run(options)


def _run(options: Options) -> int:
    try:
        services = build_catalog(load_services_file(options.services) if options.services else ())
        db_path = options.db if options.db is not None else str(default_db_path())
        sock = bind_socket(options.host, options.port)
    except (CatalogError, StartupError) as exc:
        return _fail(str(exc))
    try:
        try:
            store = open_store(db_path)
        except SandboxError as exc:
            return _fail(str(exc))
        try:
            app = create_app(
                store,
                api_keys=options.api_keys,
                services=services,
                allowlist=Allowlist.build(options.allowed_hosts, options.allowed_origins),
                device_flow=DeviceFlow(ttl=options.device_ttl, interval=options.device_interval),
            )
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level=options.log_level,
                access_log=False,
                lifespan="off",
                ws="none",
                timeout_graceful_shutdown=2,
            )
            server = _Server(config, options.host)
            log.info("sandbox database: %s", db_path)
            with _signals_to(server):
                try:
                    asyncio.run(server.serve(sockets=[sock]))
                except SystemExit:  # uvicorn exits like this when it cannot start; it logged why
                    return EXIT_STARTUP_FAILURE
        finally:
            store.close()
    finally:
        sock.close()
    return 0
