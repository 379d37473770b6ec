"""Connection-level limits of the HTTP server that ``danube-mcp --transport ...`` runs, enforced
below ASGI, in the uvicorn protocol (h11) itself:

- **a cap on open connections.** Over it, a new connection gets a canned 503 and is closed at
  once, before a byte of it is parsed, while the open ones keep being served. uvicorn's own
  ``limit_concurrency`` only answers 503 once a request's headers are complete, so clients that
  never finish them are never refused;
- **a read deadline.** A connection has ``read_timeout`` seconds to send a whole request, headers
  and body, counted from when it opens, or from the first byte of the next request on a kept-alive
  connection; past it the server answers 408 (if the client sent anything) and closes. uvicorn
  closes idle kept-alive connections (``timeout_keep_alive``) but has no such deadline: a client
  that drips its headers, or connects and says nothing, holds its connection for ever;
- **the open-files limit.** The soft ``RLIMIT_NOFILE`` is raised to the hard one at start-up, and
  the connection cap is kept below what the limit leaves room for, so that ``accept()`` does not
  run out of descriptors in the first place;
- **quiet accept errors.** When ``accept()`` fails all the same (EMFILE, ENFILE, ENOBUFS), asyncio
  logs a traceback for each attempt, up to its backlog (2048) per second. Here it is one line at
  most every :data:`LOG_INTERVAL` seconds, with a count of the ones left out, and no traceback.

Under an external ASGI server (``uvicorn --factory danube_mcp.transports.http:create_app``) none of
this applies: use that server's own limits (``--limit-concurrency``, ``--timeout-keep-alive``,
``ulimit -n``) and a proxy in front that times out slow clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from danube_mcp.transports.http_options import DEFAULT_MAX_CONNECTIONS

logger = logging.getLogger("danube_mcp.transports.http")

# Descriptors kept for everything that is not a client connection: the upstream pool (at most 128
# connections), the listening sockets, the event loop, log and database files.
RESERVED_FDS: Final = 160
LOG_INTERVAL: Final = 10.0

_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_REFUSAL_BODY: Final = (
    b'{"jsonrpc": "2.0", "id": null, "error": {"code": -32000, '
    b'"message": "Too many open connections on this server; retry shortly"}}'
)
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"cache-control: no-store\r\n"
    b"connection: close\r\n\r\n" + _REFUSAL_BODY
)
REQUEST_TIMEOUT: Final = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class RateLimitedLog:
    """One log line per ``interval`` seconds at most; the next line says how many were left out."""

    def __init__(
        self,
        log: logging.Logger,
        level: int,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.level = level
        self.interval = interval
        self.clock = clock
        self.last: float | None = None
        self.suppressed = 0
        self.total = 0

    def __call__(self, message: str, *args: Any) -> None:
        self.total += 1
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            message += " (%d more like this since the last such line)"
            args = (*args, self.suppressed)
        self.last = now
        self.suppressed = 0
        self.log.log(self.level, message, *args)


class RepeatFilter(logging.Filter):
    """For a chatty logger (uvicorn's per-request warnings, one per bad request a client can send
    as fast as it likes): each distinct message at most once per ``interval`` seconds, with a count
    of the ones left out."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._seen: dict[str, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} (%d more like this since the last such line)"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), last[1])
        if len(self._seen) > 256:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


# --------------------------------------------------------------------------------------------
# Open files


def raise_open_files_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` as far as the hard limit allows (best effort, silent).

    Returns the soft limit now in force, or None where it cannot be read (no ``resource``).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    infinite = resource.RLIM_INFINITY
    if soft == infinite or (hard != infinite and soft >= hard):
        return soft
    # An unlimited hard limit is still capped by the kernel (nr_open, OPEN_MAX on macOS).
    candidates = [hard] if hard != infinite else [1 << 20, 1 << 16, 10240]
    for target in candidates:
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            continue
        return target
    return soft


def connection_room(soft_limit: int | None) -> int | None:
    """How many client connections the open-files limit leaves room for (None: no known bound)."""
    if soft_limit is None or soft_limit < 0:
        return None
    try:
        import resource

        if soft_limit == resource.RLIM_INFINITY:
            return None
    except ImportError:  # pragma: no cover
        pass
    return max(soft_limit // 2, soft_limit - RESERVED_FDS)


# --------------------------------------------------------------------------------------------
# The guard and the protocol that applies it


@dataclass
class ConnectionGuard:
    """What every connection of one server shares: the limits and the rate-limited log lines."""

    max_connections: int
    read_timeout: float
    refused_log: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(logger, logging.WARNING), repr=False
    )
    accept_log: RateLimitedLog = field(
        default_factory=lambda: RateLimitedLog(logger, logging.ERROR), repr=False
    )
    refused: int = 0
    timed_out: int = 0
    # uvicorn's set of open connections (``server_state.connections``), and the descriptors of
    # connections admitted at accept() that have not reached their protocol yet.
    connections: Collection[object] = ()
    pending: set[int] = field(default_factory=set)

    def gate(self, conn: socket.socket) -> bool:
        """At ``accept()`` (``ListeningSocket.gate``): admit ``conn``, or answer 503 and close it."""
        open_now = len(self.connections) + len(self.pending)
        if open_now < self.max_connections:
            self.pending.add(conn.fileno())
            return True
        self.on_refused(open_now)
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(REFUSAL)  # a fresh socket's send buffer is empty: this does not block
        conn.close()
        return False

    def protocol_class(self) -> type[H11Protocol]:
        """The uvicorn ``http`` protocol class that applies this guard (``Config(http=...)``)."""
        return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": self})

    def on_refused(self, open_now: int) -> None:
        self.refused += 1
        self.refused_log(
            "connection limit reached (%d open, limit %d, see DANUBE_MCP_MAX_CONNECTIONS): "
            "refusing new connections",
            open_now,
            self.max_connections,
        )

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Event-loop exception handler: failed ``accept()`` calls become one rate-limited line;
        everything else goes to asyncio's default handler."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, OSError) and (
            message.startswith("socket.accept()") or "_accept_connection" in message
        ):
            name = errno.errorcode.get(exc.errno or 0, "error") if exc.errno else type(exc).__name__
            hint = (
                "; raise the open-files limit (ulimit -n) or lower DANUBE_MCP_MAX_CONNECTIONS"
                if exc.errno in _RESOURCE_ERRNOS
                else ""
            )
            self.accept_log(
                "cannot accept new connections: %s (%s)%s", exc.strerror or type(exc).__name__, name, hint
            )
            return
        if "_start_serving" in message and isinstance(exc, OSError | ValueError):
            # asyncio's retry after such an error, fired after the server closed its socket.
            logger.debug("accept retry after shutdown ignored")
            return
        loop.default_exception_handler(context)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the connection cap and the read deadline of :class:`ConnectionGuard`."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._partial = False  # bytes of the current request have arrived

    # -- the cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.guard.pending.discard(sock.fileno())
        open_now = len(self.connections)
        if open_now >= self.guard.max_connections:
            self._refused = True
            self.transport = transport  # type: ignore[assignment]
            self.guard.on_refused(open_now)
            transport.write(REFUSAL)  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(partial=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)

    # -- the read deadline

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        # A pipelined request read ahead is still being received: its deadline starts now. (An
        # idle kept-alive connection is uvicorn's keep-alive timeout's to close.)
        state = self.conn.their_state
        if state is h11.SEND_BODY or (state is h11.IDLE and self.conn.trailing_data[0]):
            self._arm(partial=True)

    def _follow_request(self) -> None:
        """Arm the deadline while a request is being read; disarm once it is all in."""
        state = self.conn.their_state
        if state is h11.IDLE or state is h11.SEND_BODY:
            self._arm(partial=True)
        else:
            self._disarm()

    def _arm(self, *, partial: bool) -> None:
        self._partial = self._partial or partial
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.guard.read_timeout, self._timed_out)

    def _disarm(self) -> None:
        self._partial = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.guard.timed_out += 1
        cycle = self.cycle
        if self._partial and (cycle is None or cycle.response_complete or not cycle.response_started):
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def describe_cap(configured: int | None, room: int | None) -> tuple[int, str | None]:
    """The connection cap to enforce, and a warning line when a configured one had to be lowered."""
    wanted = configured if configured is not None else DEFAULT_MAX_CONNECTIONS
    if room is None or wanted <= room:
        return wanted, None
    if configured is None:
        return room, None  # the default adapts to the machine quietly
    return room, (
        f"DANUBE_MCP_MAX_CONNECTIONS={configured} is more than the open-files limit leaves room for; "
        f"serving at most {room} connections (raise the limit with ulimit -n)"
    )
