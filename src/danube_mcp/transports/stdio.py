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
import logging
import os
import queue
import sys
import threading
from collections import Counter, deque
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

# only_pipes: pipes and sockets only, as O_NONBLOCK on a shared terminal would upset the shell
from danube_mcp.transports.fast_start import Handoff
from danube_mcp.transports.fast_start import pipes as only_pipes
from danube_mcp.transports.lines import MAX_LINE_BYTES, LineSplitter, claim_stdout, too_large
from danube_mcp.transports.lines import error_line as _error_line
from danube_mcp.transports.lines import request_id as _request_id

__all__ = ["EOF_GRACE", "MAX_LINE_BYTES", "claim_stdout", "classify_line", "stdio_transport"]

logger = logging.getLogger("danube_mcp.transports.stdio")

# After stdin closes, calls already received get this long to finish and write their answers.
EOF_GRACE: Final = 5.0
_READ_CHUNK: Final = 64 * 1024


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


def _splitter(
    carried: LineSplitter | None, push: Callable[[bytes], None], write: Callable[[bytes], None]
) -> LineSplitter:
    def on_too_long(prefix: bytearray) -> None:
        write(too_large(prefix))

    if carried is None:
        return LineSplitter(push, on_too_long)
    carried.retarget(push, on_too_long)
    return carried


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

    def __init__(self, splitter: LineSplitter | None = None) -> None:
        self._lines: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._eof = False
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._out_closed = False
        self._in_transport: asyncio.ReadTransport | None = None
        self._out_transport: asyncio.WriteTransport | None = None
        self._splitter = _splitter(splitter, self._push, self.write)

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

    def __init__(self, stdin: BinaryIO, stdout: BinaryIO, splitter: LineSplitter | None = None) -> None:
        self._in_fd = stdin.fileno()
        self._out = stdout
        self._loop = asyncio.get_running_loop()
        self._incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._room = threading.Semaphore(256)  # back-pressure on a flood of input lines
        self._out_queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._out_room = asyncio.Event()
        self._out_room.set()
        self._splitter = _splitter(splitter, self._push, self.write)
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


async def _open_io(
    stdin: BinaryIO, stdout: BinaryIO, splitter: LineSplitter | None = None
) -> _PipeIO | _ThreadIO:
    if only_pipes(stdin, stdout):
        pipes = _PipeIO(splitter)
        try:
            await pipes.open(stdin, stdout)
            return pipes
        except (OSError, ValueError, NotImplementedError):
            pass
    return _ThreadIO(stdin, stdout, splitter)


class _Replay:
    """The lines a fast start read (see :mod:`danube_mcp.transports.fast_start`), fed to the SDK
    first; the SDK's answers to the requests already answered are checked and dropped."""

    def __init__(self, handoff: Handoff | None) -> None:
        self.lines: deque[bytes] = deque(handoff.replay if handoff else ())
        self.expected = dict(handoff.expected) if handoff else {}
        self._on_mismatch = handoff.on_mismatch if handoff else None

    def swallow(self, answer: dict[str, Any]) -> bool:
        """True when ``answer`` is the SDK's to a request answered already (so it is not sent)."""
        if not self.expected:
            return False
        rid = answer.get("id")
        sent = self.expected.pop(rid, None) if isinstance(rid, str) else None
        if sent is None:
            return False
        body = {k: v for k, v in answer.items() if k != "id"}
        if body != {k: v for k, v in sent.items() if k != "id"}:
            logger.warning(
                "fast start: an answer sent before the SDK had loaded differs from the SDK's own; "
                "its cache is discarded (the next start answers through the SDK)"
            )
            if self._on_mismatch is not None:
                self._on_mismatch()
                self._on_mismatch = None
        return True


@asynccontextmanager
async def stdio_transport(
    stdin: BinaryIO | None = None, stdout: BinaryIO | None = None, handoff: Handoff | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """Yield the (read, write) stream pair that ``Server.run`` expects.

    With ``handoff``, carry on where a fast start left off: its lines first, then the rest of stdin.
    """
    replay = _Replay(handoff)
    io = await _open_io(
        stdin or sys.stdin.buffer, stdout or sys.stdout.buffer, handoff.splitter if handoff else None
    )
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)

    # Requests read but not yet answered: on EOF they are finished (bounded by EOF_GRACE) before
    # the session ends, so `printf ... | danube-mcp` gets every answer it asked for.
    pending: Counter[Any] = Counter()  # by id: a client may reuse an id while the first is running
    settled = [anyio.Event()]  # replaced after each wake-up (anyio events cannot be cleared)

    async def pump_in() -> None:
        async with read_send:
            while (line := replay.lines.popleft() if replay.lines else await io.next_line()) is not None:
                parsed = classify_line(line)
                if parsed is None:
                    continue
                if not isinstance(parsed, bytes):
                    parsed = _unknown_method(parsed) or parsed
                if isinstance(parsed, bytes):
                    if not replay.swallow(json.loads(parsed)):
                        io.write(parsed)
                        await io.drain()  # a client that sends junk and never reads cannot grow memory
                    continue
                if isinstance(parsed.message, types.JSONRPCRequest):
                    pending[parsed.message.id] += 1
                elif _cancels(parsed.message):
                    # A cancelled request is never answered: do not wait for it at EOF.
                    pending.pop(_cancelled_id(parsed.message), None)
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
                    data = out.model_dump_json(by_alias=True, exclude_unset=True).encode()
                    answer = isinstance(out, types.JSONRPCResponse | types.JSONRPCError)
                    if pending and isinstance(out, types.JSONRPCResponse | types.JSONRPCError):
                        if pending[out.id] > 1:
                            pending[out.id] -= 1
                        else:
                            pending.pop(out.id, None)
                        settled[0].set()
                    if answer and replay.expected and replay.swallow(json.loads(data)):
                        continue
                    io.write(data + b"\n")
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
