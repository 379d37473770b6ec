"""The stdio transport: newline-delimited JSON-RPC on stdin/stdout.

Written for this server rather than taken from the SDK (``mcp.server.stdio``) because:

* stdout belongs to the protocol. :func:`claim_stdout` moves the protocol to a private duplicate of
  file descriptor 1 and points fd 1 (and ``sys.stdout``) at stderr, so a stray ``print`` or a
  library writing to stdout can never corrupt the stream.
* Malformed input gets the answer JSON-RPC requires (``-32700`` parse error, ``-32600`` invalid
  request, ``-32601`` unknown method) instead of an error log line that quotes the input.
* Lines are size-limited, and reading and writing happen in two daemon threads, so a blocked pipe
  never stalls the event loop and the process exits at once when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sys
import threading
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, BinaryIO, Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

MAX_LINE_BYTES: Final = 4 * 1024 * 1024
_READ_CHUNK: Final = 64 * 1024


def _client_methods() -> frozenset[str]:
    methods: set[str] = set()
    for union in (types.ClientRequest, types.ClientNotification):
        for model in typing.get_args(union.model_fields["root"].annotation):
            for literal in typing.get_args(model.model_fields["method"].annotation):
                methods.add(literal)
    return frozenset(methods)


CLIENT_METHODS: Final = _client_methods()


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
    """Parse one input line: a message for the session, an error line to answer with, or None."""
    if not line.strip():
        return None
    try:
        return SessionMessage(types.JSONRPCMessage.model_validate_json(line))
    except ValidationError:
        pass
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return _error_line(-32700, "Parse error: the line is not valid JSON")
    rid = _request_id(obj)
    is_call = isinstance(obj, dict) and obj.get("jsonrpc") == "2.0" and isinstance(obj.get("method"), str)
    if is_call and "id" not in obj:
        return None  # a malformed notification gets no answer
    return _error_line(-32600, "Invalid Request: not a JSON-RPC 2.0 message", rid)


def _unknown_method(message: SessionMessage) -> bytes | None:
    root = message.message.root
    if isinstance(root, types.JSONRPCRequest) and root.method not in CLIENT_METHODS:
        return _error_line(-32601, "Method not found", root.id)
    return None


@asynccontextmanager
async def stdio_transport(
    stdin: BinaryIO | None = None, stdout: BinaryIO | None = None
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """Yield the (read, write) stream pair that ``Server.run`` expects."""
    in_fd = (stdin or sys.stdin.buffer).fileno()
    out = stdout or sys.stdout.buffer
    loop = asyncio.get_running_loop()

    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](64)
    out_queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    incoming: asyncio.Queue[bytes | None] = asyncio.Queue()
    room = threading.Semaphore(256)  # back-pressure on a flood of input lines

    def reader() -> None:
        buf = bytearray()
        skipping = False
        try:
            while True:
                chunk = os.read(in_fd, _READ_CHUNK)
                if not chunk:
                    break
                start = 0
                while True:
                    nl = chunk.find(b"\n", start)
                    piece = chunk[start:] if nl < 0 else chunk[start:nl]
                    if not skipping:
                        buf += piece
                        if len(buf) > MAX_LINE_BYTES:
                            buf.clear()
                            skipping = True
                            out_queue.put(_error_line(-32600, "Invalid Request: message too large"))
                    if nl < 0:
                        break
                    if not skipping:
                        room.acquire()
                        loop.call_soon_threadsafe(incoming.put_nowait, bytes(buf))
                    buf.clear()
                    skipping = False
                    start = nl + 1
            if buf and not skipping:
                room.acquire()
                loop.call_soon_threadsafe(incoming.put_nowait, bytes(buf))
        except (OSError, RuntimeError):
            pass  # stdin closed, or the loop is gone: either way, input is over
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(incoming.put_nowait, None)

    def writer() -> None:
        while True:
            data = out_queue.get()
            if data is None:
                return
            try:
                out.write(data)
                out.flush()
            except (OSError, ValueError):
                return  # the client went away: nothing more can be said

    async def pump_in() -> None:
        async with read_send:
            while True:
                line = await incoming.get()
                if line is None:
                    return
                room.release()
                parsed = classify_line(line)
                if parsed is None:
                    continue
                if isinstance(parsed, bytes):
                    out_queue.put(parsed)
                    continue
                rejected = _unknown_method(parsed)
                if rejected is not None:
                    out_queue.put(rejected)
                    continue
                await read_send.send(parsed)

    out_done = anyio.Event()

    async def pump_out() -> None:
        try:
            async with write_recv:
                async for message in write_recv:
                    out_queue.put(
                        message.message.model_dump_json(by_alias=True, exclude_none=True).encode() + b"\n"
                    )
        finally:
            out_done.set()

    reader_thread = threading.Thread(target=reader, name="danube-mcp-stdin", daemon=True)
    writer_thread = threading.Thread(target=writer, name="danube-mcp-stdout", daemon=True)
    reader_thread.start()
    writer_thread.start()
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
        out_queue.put(None)
        # Let queued answers reach the client; never hang on a client that stopped reading.
        await anyio.to_thread.run_sync(writer_thread.join, 2.0, abandon_on_cancel=True)
