"""Open the listening sockets of an HTTP transport before the server starts, so a port already in
use (or an address this machine does not have) is one clear line instead of uvicorn's traceback.

The sockets are handed to uvicorn (``Server.serve(sockets=...)``): binding once, here, leaves no
window between a check and the real bind in which another program could take the port.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from danube_mcp.config import ConfigError

BACKLOG = 2048  # uvicorn's default


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# Connections a gate may refuse in one accept() call before the event loop gets a turn.
REFUSALS_PER_CALL = 256


class ListeningSocket(socket.socket):
    """A listening socket with a gate at ``accept()``, and an end to asyncio's accept loop at the
    first resource error.

    ``gate``, when set, sees every accepted connection before asyncio does: True hands it on,
    False means the gate has answered and closed it. asyncio accepts up to its backlog (2048)
    connections in one pass before any of them reaches a protocol, so a cap checked only in the
    protocol can be overrun by a burst; checked here, it cannot.

    On EMFILE (and the like) asyncio logs the error, stops watching the socket for a second, and
    then *keeps calling* ``accept()`` up to its backlog times in the same pass, logging and
    scheduling a retry for every failure: thousands of log lines and timers per second while the
    process is out of descriptors. Answering the next call with "nothing to accept" ends that pass
    after one failure; the retry a second later starts afresh.
    """

    _exhausted = False
    gate: Callable[[socket.socket], bool] | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        if self._exhausted:
            self._exhausted = False
            raise BlockingIOError(errno.EAGAIN, "accept paused after a resource error")
        for _ in range(REFUSALS_PER_CALL):
            try:
                conn, address = super().accept()
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._exhausted = True
                raise
            if self.gate is None or self.gate(conn):
                return conn, address
        raise BlockingIOError(errno.EAGAIN, "accept yields after refusing connections")


class BindError(ConfigError):
    """The address cannot be listened on. The message is one line that says what to do."""


def _describe(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is already in use ({where}): stop the other program or choose another "
            "port with --port or DANUBE_MCP_PORT (0 picks a free one)"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"not allowed to listen on {where} (ports below 1024 need privileges): choose a port "
            "from 1024 to 65535 with --port or DANUBE_MCP_PORT"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {where}: this machine has no such address; set --host or "
            "DANUBE_MCP_HOST to one of its addresses (127.0.0.1 for this machine only)"
        )
    reason = exc.strerror or type(exc).__name__
    return f"cannot listen on {where} ({reason}); check --host/--port or DANUBE_MCP_HOST/DANUBE_MCP_PORT"


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address ``host`` resolves to (like
    asyncio's ``create_server``). Raises :class:`BindError` with one line on any failure."""
    bare = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            bare or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        raise BindError(
            f"cannot listen on {host}: the name does not resolve; set --host or DANUBE_MCP_HOST "
            "to an address of this machine (127.0.0.1 for this machine only)"
        ) from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str | int]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = ListeningSocket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                # One socket per family, as asyncio does; the IPv4 one takes 0.0.0.0 and friends.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise BindError(_describe(bare, port, exc)) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for opened in sockets:
            opened.close()
        raise
    return sockets
