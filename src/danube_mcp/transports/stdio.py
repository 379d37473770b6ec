"""The stdio transport: newline-delimited JSON-RPC on stdin/stdout.

Written for this server rather than taken from the SDK (``mcp.server.stdio``) because:

* stdout belongs to the protocol. :func:`claim_stdout` moves the protocol to a private duplicate of
  file descriptor 1 and points fd 1 (and ``sys.stdout``) at stderr, so a stray ``print`` or a
  library writing to stdout can never corrupt the stream.
* Malformed input gets the answer JSON-RPC requires (``-32700`` parse error, ``-32600`` invalid
  request, ``-32601`` unknown method) instead of an error log line that quotes the input.
* Lines are size-limited. On POSIX, when stdin and stdout are pipes (as hosts start servers), they
  are read and written by the event loop itself, with no thread hand-offs on the hot path; anywhere
  else (Windows, a terminal, a file) two daemon threads do it. Either way a client that stops
  reading never stalls the loop, and the process exits at once when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import stat
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, Final

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from mcp_types.methods import SPEC_CLIENT_METHODS
from pydantic import ValidationError

from danube_mcp.jsonutil import loads_strict

MAX_LINE_BYTES: Final = 4 * 1024 * 1024
# After stdin closes, calls already received get this long to finish and write their answers.
EOF_GRACE: Final = 5.0
_READ_CHUNK: Final = 64 * 1024


def claim_stdout() -> BinaryIO:
    """Return a private binary handle on the real stdout; send everything else to stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=0)


def _error_line(code: int, message: str, id_: Any = None) -> bytes:
    return (
        json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}).encode()
        + b"\n"
    )


def _request_id(obj: Any) -> Any:
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, str | int) and not isinstance(rid, bool):
            return rid
    return None


def classify_line(line: bytes) -> SessionMessage | bytes | None:
    """Parse one input line: a message for the session, an error line to answer with, or None.

    Follows JSON-RPC 2.0: invalid JSON gets -32700 (id null); a request that is not a valid
    Request object gets -32600; a request whose params are not an object gets -32602; a
    notification, or a response, is never answered, however malformed.
    """
    if not line.strip():
        return None
    try:
        message: types.JSONRPCMessage | None = types.jsonrpc_message_adapter.validate_json(
            line, by_name=False
        )
    except (ValidationError, RecursionError, ValueError):
        message = None
    if message is not None:
        # The SDK's model takes a request whose id is null, boolean, fractional or structured
        # for a notification (extra fields are allowed); JSON-RPC calls it an invalid request.
        if isinstance(message, types.JSONRPCNotification) and b'"id"' in line:
            obj = _loads(line)
            if isinstance(obj, dict) and "id" in obj:
                return _error_line(-32600, "Invalid Request: id must be a string or an integer")
        return SessionMessage(message)
    obj = _loads(line)
    if obj is _INVALID:
        return _error_line(-32700, "Parse error: the line is not valid JSON")
    if isinstance(obj, list):
        return _error_line(-32600, "Invalid Request: batches are not supported")
    if not isinstance(obj, dict):
        return _error_line(-32600, "Invalid Request: not a JSON-RPC 2.0 message")
    rid = _request_id(obj)
    if not isinstance(obj.get("method"), str):
        if "result" in obj or "error" in obj:
            return None  # a response we cannot use: answering it could start an endless exchange
        return _error_line(-32600, "Invalid Request: not a JSON-RPC 2.0 message", rid)
    if "id" not in obj:
        return None  # a malformed notification gets no answer
    if obj.get("jsonrpc") != "2.0":
        return _error_line(-32600, "Invalid Request: not a JSON-RPC 2.0 message", rid)
    if rid is None:
        return _error_line(-32600, "Invalid Request: id must be a string or an integer")
    params = obj.get("params")
    if isinstance(params, list):  # valid JSON-RPC, but MCP's params are always an object
        return _error_line(-32602, "Invalid params: params must be an object", rid)
    if params is not None and not isinstance(params, dict):  # JSON-RPC: params must be structured
        return _error_line(-32600, "Invalid Request: not a JSON-RPC 2.0 message", rid)
    # Well-formed, yet refused by pydantic's JSON parser (an escaped lone surrogate, say): let
    # the request through from the decoded object, so the tool can say what is wrong.
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_python(obj, by_name=False))
    except (ValidationError, RecursionError, ValueError):
        return _error_line(-32600, "Invalid Request: not a valid MCP message", rid)


def _cancels(message: types.JSONRPCMessage) -> bool:
    return isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled"


def _cancelled_id(message: types.JSONRPCMessage) -> Any:
    """The request id a cancel names, or None: any JSON may sit there, an unhashable list too."""
    params = getattr(message, "params", None)
    return _request_id({"id": params.get("requestId")}) if isinstance(params, dict) else None


_INVALID: Final = object()


def _loads(line: bytes) -> Any:
    """Strict JSON: UTF-8 only (no encoded surrogates), bounded nesting; ``_INVALID`` otherwise."""
    try:
        return loads_strict(line)
    except ValueError:
        return _INVALID


def _unknown_method(message: SessionMessage) -> bytes | None:
    """-32601 for a request naming no MCP method at all, answered here at once and without
    quoting the name (the SDK's answer would echo it in ``data``)."""
    root = message.message
    if isinstance(root, types.JSONRPCRequest) and root.method not in SPEC_CLIENT_METHODS:
        return _error_line(-32601, "Method not found", root.id)
    return None


_DECODER: Final = json.JSONDecoder()
_WS: Final = " \t\n\r"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def request_id_from_prefix(prefix: bytes | bytearray) -> Any:
    """The id of the request an over-long line starts, or None when it cannot be read.

    Walks the top-level members of the JSON object at the start of ``prefix`` (the first bytes of
    a line that was cut off) and stops at the first member that does not end within it. The id
    counts only when the line is a request: a string ``method`` was seen, or ``params`` is the
    member that was cut off, and no ``result`` or ``error`` member was seen (answering a response
    could end one of the client's own calls that happens to share its id).
    """
    raw = bytes(prefix)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(raw) - 3:
            return None  # invalid UTF-8, not just a character cut in two at the end
        text = raw[: exc.start].decode("utf-8", errors="strict")
    rid: Any = None
    is_request = False
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        return None
    pos += 1
    try:
        while True:
            pos = _skip_ws(text, pos)
            if not text.startswith('"', pos):
                return None
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos):
                return None
            pos = _skip_ws(text, pos + 1)
            try:
                value, pos = _DECODER.raw_decode(text, pos)
            except ValueError:
                # The member that was cut off: a request's params is what makes a line long.
                is_request = is_request or key == "params"
                break
            if key in ("result", "error"):
                return None
            if key == "method":
                is_request = isinstance(value, str)
            elif key == "id":
                rid = _request_id({"id": value})
            pos = _skip_ws(text, pos)
            if text.startswith(",", pos):
                pos += 1
            else:
                break  # the object closed (or is malformed) within the prefix
    except (ValueError, RecursionError):
        return None
    return rid if is_request else None


def too_large(prefix: bytes | bytearray) -> bytes:
    """The answer to an over-long line: -32600, with the request's id when it can be read."""
    return _error_line(-32600, "Invalid Request: message too large", request_id_from_prefix(prefix))


class _LineSplitter:
    """Splits a byte stream into lines; a line over the limit is dropped and reported instead
    (``on_too_long`` gets the first bytes of that line, at least the limit's worth)."""

    def __init__(self, on_line: Callable[[bytes], None], on_too_long: Callable[[bytearray], None]) -> None:
        self._on_line = on_line
        self._on_too_long = on_too_long
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not self._skipping:
                self._buf += piece
                if len(self._buf) > MAX_LINE_BYTES:
                    self._skipping = True
                    self._on_too_long(self._buf)
                    self._buf.clear()
            if nl < 0:
                return
            if not self._skipping:
                self._on_line(bytes(self._buf))
            self._buf.clear()
            self._skipping = False
            start = nl + 1

    def finish(self) -> None:
        if self._buf and not self._skipping:
            self._on_line(bytes(self._buf))
        self._buf.clear()


class _PipeIO:
    """stdin and stdout as asyncio pipes (POSIX): no threads, no cross-thread wake-ups."""

    class _In(asyncio.Protocol):
        def __init__(self, io: _PipeIO) -> None:
            self.io = io

        def data_received(self, data: bytes) -> None:
            self.io._splitter.feed(data)
            if len(self.io._lines) > 256 and not self.io._paused:
                self.io._paused = True
                assert self.io._in_transport is not None
                self.io._in_transport.pause_reading()  # back-pressure on a flood of input

        def eof_received(self) -> bool:
            self.io._splitter.finish()
            self.io._end()
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            self.io._end()

    class _Out(asyncio.Protocol):
        def __init__(self, io: _PipeIO) -> None:
            self.io = io

        def pause_writing(self) -> None:
            self.io._writable.clear()

        def resume_writing(self) -> None:
            self.io._writable.set()

        def connection_lost(self, exc: Exception | None) -> None:
            self.io._out_closed = True
            self.io._writable.set()

    def __init__(self) -> None:
        self._lines: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._eof = False
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._out_closed = False
        self._in_transport: asyncio.ReadTransport | None = None
        self._out_transport: asyncio.WriteTransport | None = None
        self._splitter = _LineSplitter(self._push, lambda prefix: self.write(too_large(prefix)))

    async def open(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        self._in_transport, _ = await loop.connect_read_pipe(lambda: self._In(self), stdin)
        try:
            self._out_transport, _ = await loop.connect_write_pipe(lambda: self._Out(self), stdout)
        except BaseException:
            self._in_transport.close()
            raise

    def _push(self, line: bytes) -> None:
        self._lines.append(line)
        self._ready.set()

    def _end(self) -> None:
        self._eof = True
        self._ready.set()

    async def next_line(self) -> bytes | None:
        while not self._lines:
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self._paused and len(self._lines) < 64:
            self._paused = False
            assert self._in_transport is not None
            self._in_transport.resume_reading()
        return self._lines.popleft()

    def write(self, data: bytes) -> None:
        if not self._out_closed and self._out_transport is not None:
            self._out_transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    async def close(self) -> None:
        out = self._out_transport
        if out is not None and not self._out_closed:
            with anyio.move_on_after(2.0, shield=True):  # never hang on a client that stopped reading
                while out.get_write_buffer_size() and not self._out_closed:
                    self._writable.clear()
                    await asyncio.sleep(0.005)
            out.close()
        if self._in_transport is not None:
            self._in_transport.close()


class _ThreadIO:
    """stdin and stdout through two daemon threads: for Windows, terminals and regular files."""

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self._in_fd = stdin.fileno()
        self._out = stdout
        self._loop = asyncio.get_running_loop()
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._room = threading.Semaphore(256)  # back-pressure on a flood of input lines
        self._out_queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._out_room = asyncio.Event()
        self._out_room.set()
        self._splitter = _LineSplitter(self._push, lambda prefix: self.write(too_large(prefix)))
        self._reader = threading.Thread(target=self._read, name="danube-mcp-stdin", daemon=True)
        self._writer = threading.Thread(target=self._write, name="danube-mcp-stdout", daemon=True)
        self._reader.start()
        self._writer.start()

    def _push(self, line: bytes) -> None:  # reader thread
        self._room.acquire()
        self._loop.call_soon_threadsafe(self._incoming.put_nowait, line)

    def _read(self) -> None:
        try:
            while chunk := os.read(self._in_fd, _READ_CHUNK):
                self._splitter.feed(chunk)
            self._splitter.finish()
        except (OSError, RuntimeError):
            pass  # stdin closed, or the loop is gone: either way, input is over
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._incoming.put_nowait, None)

    def _write(self) -> None:
        try:
            while (data := self._out_queue.get()) is not None:
                self._out.write(data)
                self._out.flush()
                if not self._out_room.is_set() and self._out_queue.qsize() <= 64:
                    self._loop.call_soon_threadsafe(self._out_room.set)
        except (OSError, ValueError, RuntimeError):
            pass  # the client went away (or the loop did): nothing more can be said
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._out_room.set)

    async def next_line(self) -> bytes | None:
        line = await self._incoming.get()
        if line is not None:
            self._room.release()
        return line

    def write(self, data: bytes) -> None:
        self._out_queue.put(data)

    async def drain(self) -> None:
        # Bounded: wait while the writer thread is far behind (a client that stopped reading).
        if self._out_queue.qsize() > 256 and self._writer.is_alive():
            self._out_room.clear()
            await self._out_room.wait()

    async def close(self) -> None:
        self._out_queue.put(None)
        # A plain join: the queue is short by now, and a worker thread would cost more to start.
        self._writer.join(2.0)


def _pipe_capable(*files: BinaryIO) -> bool:
    if sys.platform == "win32":
        return False
    for f in files:
        try:
            mode = os.fstat(f.fileno()).st_mode
        except (OSError, ValueError):
            return False
        # Pipes and sockets only: O_NONBLOCK on a shared terminal would upset the shell after
        # exit, and epoll cannot watch regular files.
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
    return True


async def _open_io(stdin: BinaryIO, stdout: BinaryIO) -> _PipeIO | _ThreadIO:
    if _pipe_capable(stdin, stdout):
        pipes = _PipeIO()
        try:
            await pipes.open(stdin, stdout)
            return pipes
        except (OSError, ValueError, NotImplementedError):
            pass
    return _ThreadIO(stdin, stdout)


@asynccontextmanager
async def stdio_transport(
    stdin: BinaryIO | None = None, stdout: BinaryIO | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """Yield the (read, write) stream pair that ``Server.run`` expects."""
    io = await _open_io(stdin or sys.stdin.buffer, stdout or sys.stdout.buffer)
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)

    # Requests read but not yet answered: on EOF they are finished (bounded by EOF_GRACE) before
    # the session ends, so `printf ... | danube-mcp` gets every answer it asked for.
    pending: set[Any] = set()
    settled = [anyio.Event()]  # replaced after each wake-up (anyio events cannot be cleared)

    async def pump_in() -> None:
        async with read_send:
            while (line := await io.next_line()) is not None:
                parsed = classify_line(line)
                if parsed is None:
                    continue
                if isinstance(parsed, bytes):
                    io.write(parsed)
                    await io.drain()  # a client that sends junk and never reads cannot grow memory
                    continue
                rejected = _unknown_method(parsed)
                if rejected is not None:
                    io.write(rejected)
                    await io.drain()
                    continue
                if isinstance(parsed.message, types.JSONRPCRequest):
                    pending.add(parsed.message.id)
                elif _cancels(parsed.message):
                    # A cancelled request is never answered: do not wait for it at EOF.
                    pending.discard(_cancelled_id(parsed.message))
                await read_send.send(parsed)
            if pending:
                with anyio.move_on_after(EOF_GRACE):
                    while pending:
                        await settled[0].wait()
                        settled[0] = anyio.Event()

    out_done = anyio.Event()

    async def pump_out() -> None:
        try:
            async with write_recv:
                async for message in write_recv:
                    out = message.message
                    io.write(out.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
                    if pending and isinstance(out, types.JSONRPCResponse | types.JSONRPCError):
                        pending.discard(out.id)
                        settled[0].set()
                    await io.drain()
        finally:
            out_done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            try:
                yield read_recv, write_send
            finally:
                await write_send.aclose()
                with anyio.move_on_after(2.0, shield=True):
                    await out_done.wait()
                tg.cancel_scope.cancel()
    finally:
        await io.close()
