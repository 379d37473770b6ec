"""A small HTTP/1.1 keep-alive client for the one request this program sends: ``POST`` a JSON body
to Danube and read a bounded answer.

Why not httpx2 here: per call, httpx2 over httpcore2 over anyio builds request and response
objects, h11 events, one cancel scope per socket read and write, and walks its whole pool twice;
together that was about 40% of the server's CPU per call over HTTP (bench/README.md). This client
does the same exchange on an asyncio ``Protocol`` with one buffer per connection: a request is one
``write`` of pre-built bytes, an answer is parsed from the buffer in place, and reusing an idle
connection is a pop from a stack after a check that costs no system call (the protocol already
knows when the server closed the connection).

What it supports is what Danube's endpoint needs: ``http``/``https`` (TLS through asyncio's SSL,
with the caller's context and server name), ``Content-Length``, chunked and close-delimited
bodies, ``gzip``/``deflate`` content coding, interim 1xx answers, ``Connection: close``. Bodies
are capped: an answer larger than the cap is reported as too big and its connection dropped.
Timeouts are the caller's (one deadline around the whole exchange); a cancelled exchange closes
its connection. No proxies (the client never reads proxy settings), no redirects, no cookies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Final

import anyio

MAX_HEAD_BYTES: Final = 64 * 1024


class WireError(Exception):
    """The exchange failed; ``stage`` says how far it got (``connect``, ``exchange``)."""

    def __init__(self, stage: str, what: str) -> None:
        super().__init__(what)
        self.stage = stage


@dataclass(frozen=True, slots=True)
class WireResponse:
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased
    body: bytes
    too_big: bool

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k == key:
                return v.decode("latin-1")
        return None


class _Connection(asyncio.Protocol):
    """One connection: a buffer the event loop fills, and a way to wait for more."""

    __slots__ = ("_waiter", "buf", "eof", "idle_since", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- use -----------------------------------------------------------------------------------

    def reusable(self, now: float, expiry: float) -> bool:
        """Idle, open, nothing unexpected buffered, and not idle for longer than ``expiry``."""
        t = self.transport
        return (
            t is not None
            and not self.eof
            and not self.buf
            and not t.is_closing()
            and now - self.idle_since < expiry
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # never linger on a connection in an unknown state

    async def wait(self) -> None:
        """Wait until more bytes arrive or the connection ends."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def more(self) -> None:
        """Wait for more bytes; the end of the connection here is an incomplete answer."""
        if self.eof:
            raise WireError("exchange", "the connection closed before a complete answer arrived")
        await self.wait()

    async def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self.more()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def line(self, limit: int) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > limit:
                raise WireError("exchange", "a line of the answer was too long")
            await self.more()
        out = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return out


def _parse_head(head: bytes) -> tuple[int, str, bool, tuple[tuple[bytes, bytes], ...]]:
    """(status, reason, HTTP/1.1 or later, headers) from the status line and header lines."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise WireError("exchange", "the answer did not start with an HTTP/1.x status line")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise WireError("exchange", "the answer had a malformed header line")
        headers.append((name.lower(), value.strip()))
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return int(parts[1]), reason, parts[0] != b"HTTP/1.0", tuple(headers)


def _values(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> list[bytes]:
    return [v for k, v in headers if k == name]


def _decode(body: bytes, coding: bytes, cap: int) -> tuple[bytes, bool]:
    """Undo a ``gzip``/``deflate`` content coding, never producing more than ``cap`` bytes."""
    wbits = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS}.get(
        coding
    )
    if wbits is None:
        raise WireError("exchange", "the answer used a content coding this client does not read")
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(body, cap + 1)
    except zlib.error:
        if coding != b"deflate":
            raise WireError("exchange", "the answer's compressed body was corrupt") from None
        try:  # some servers send raw deflate without the zlib header
            d = zlib.decompressobj(-zlib.MAX_WBITS)
            out = d.decompress(body, cap + 1)
        except zlib.error:
            raise WireError("exchange", "the answer's compressed body was corrupt") from None
    return (b"", True) if len(out) > cap else (out, False)


async def _read_answer(conn: _Connection, cap: int) -> tuple[WireResponse, bool]:
    """One answer from ``conn``; and whether the connection may carry another request."""
    while True:
        while (end := conn.buf.find(b"\r\n\r\n")) < 0:
            if len(conn.buf) > MAX_HEAD_BYTES:
                raise WireError("exchange", "the answer's headers were too large")
            await conn.more()
        head = bytes(conn.buf[:end])
        del conn.buf[: end + 4]
        status, reason, http11, headers = _parse_head(head)
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        break
    connection = b",".join(_values(headers, b"connection")).lower()
    keep = http11 and b"close" not in connection
    codings = [
        c.strip().lower() for v in _values(headers, b"transfer-encoding") for c in v.split(b",") if c.strip()
    ]
    lengths = {v.strip() for v in _values(headers, b"content-length")}
    too_big = False
    if status in (204, 304):
        body = b""
    elif codings:
        if codings != [b"chunked"]:
            raise WireError("exchange", "the answer used a transfer coding this client does not read")
        chunks: list[bytes] = []
        size = 0
        while True:
            size_line = await conn.line(1024)
            text = size_line.split(b";", 1)[0].strip()
            try:
                n = int(text, 16)
            except ValueError:
                raise WireError("exchange", "the answer's chunked body was malformed") from None
            if n < 0:
                raise WireError("exchange", "the answer's chunked body was malformed")
            if n == 0:
                while await conn.line(MAX_HEAD_BYTES):  # trailers, up to the empty line
                    pass
                break
            size += n
            if size > cap:
                too_big, keep = True, False
                break
            chunks.append(await conn.take(n))
            if await conn.take(2) != b"\r\n":
                raise WireError("exchange", "the answer's chunked body was malformed")
        body = b"".join(chunks) if not too_big else b""
    elif lengths:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise WireError("exchange", "the answer's Content-Length was malformed")
        n = int(next(iter(lengths)))
        if n > cap:
            body, too_big, keep = b"", True, False
        else:
            body = await conn.take(n)
    else:
        # The body ends when the server closes the connection.
        keep = False
        while not conn.eof and len(conn.buf) <= cap:
            await conn.wait()
        if len(conn.buf) > cap:
            body, too_big = b"", True
        else:
            body = bytes(conn.buf)
        conn.buf.clear()
    coding = b",".join(_values(headers, b"content-encoding")).strip().lower()
    if body and coding not in (b"", b"identity"):
        body, decoded_too_big = _decode(body, coding, cap)
        too_big = too_big or decoded_too_big
    return WireResponse(status, reason, headers, body, too_big), keep


class WirePool:
    """Keep-alive connections to one origin, at most ``max_connections`` open at once."""

    def __init__(
        self,
        *,
        scheme: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        keepalive_expiry: float,
        connect_timeout: float,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError("scheme must be http or https")
        self.host = host
        self.port = port
        self._ssl = ssl_context if scheme == "https" else None
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.closed = False
        default = 443 if scheme == "https" else 80
        bracketed = f"[{host}]" if ":" in host else host
        self.authority = (bracketed if port == default else f"{bracketed}:{port}").encode("ascii")

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            with anyio.fail_after(self._connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise WireError("connect", "the connection attempt timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise WireError(
                "connect", f"the connection was refused or failed ({type(exc).__name__})"
            ) from None
        return conn

    async def _acquire(self) -> _Connection:
        while True:
            if self.closed:
                raise WireError("connect", "the client has been closed")
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if conn.reusable(now, self._expiry):
                    return conn
                conn.close()
                self._open -= 1
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                # Woken and cancelled at once: pass the turn on, or the next waiter sleeps on.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: _Connection, keep: bool) -> None:
        conn.idle_since = time.monotonic()
        if keep and not self.closed and conn.reusable(conn.idle_since, self._expiry):
            self._idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._wake_one()

    async def request(self, head: bytes, body: bytes, cap: int) -> WireResponse:
        """Send ``head`` (request line and headers without ``Host``/``Content-Length``, each line
        ending in CRLF) and ``body``; read the answer, at most ``cap`` body bytes."""
        conn = await self._acquire()
        keep = False
        try:
            assert conn.transport is not None
            conn.transport.write(
                b"".join(
                    (
                        head,
                        b"host: ",
                        self.authority,
                        b"\r\ncontent-length: ",
                        str(len(body)).encode(),
                        b"\r\n\r\n",
                        body,
                    )
                )
            )
            answer, keep = await _read_answer(conn, cap)
            return answer
        finally:
            self._release(conn, keep)

    async def aclose(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._open -= len(self._idle)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
