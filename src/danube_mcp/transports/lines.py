"""Lines of the stdio protocol, without the SDK: splitting a byte stream into size-limited lines,
JSON-RPC error lines, and the answer to an over-long line.

Kept free of SDK imports so that the fast start (:mod:`danube_mcp.transports.fast_start`) can use
it while the SDK is still loading.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, Final

MAX_LINE_BYTES: Final = 4 * 1024 * 1024


def claim_stdout() -> BinaryIO:
    """Return a private binary handle on the real stdout; send everything else to stderr."""
    sys.stdout.flush()
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "wb", buffering=0)


def error_line(code: int, message: str, id_: Any = None) -> bytes:
    return (
        json.dumps({"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}).encode()
        + b"\n"
    )


def request_id(obj: Any) -> Any:
    """A usable JSON-RPC id from a decoded message, or None. A string holding a lone surrogate
    (an escaped one in the JSON) is not usable: no answer carrying it can be written as UTF-8."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
        if isinstance(rid, str):
            try:
                rid.encode("utf-8")
            except UnicodeEncodeError:
                return None
            return rid
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
                rid = request_id({"id": value})
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
    return error_line(-32600, "Invalid Request: message too large", request_id_from_prefix(prefix))


class LineSplitter:
    """Splits a byte stream into lines; a line over the limit is dropped and reported instead
    (``on_too_long`` gets the first bytes of that line, at least the limit's worth)."""

    def __init__(self, on_line: Callable[[bytes], None], on_too_long: Callable[[bytearray], None]) -> None:
        self._on_line = on_line
        self._on_too_long = on_too_long
        self._buf = bytearray()
        self._skipping = False

    def retarget(self, on_line: Callable[[bytes], None], on_too_long: Callable[[bytearray], None]) -> None:
        """Hand the stream (and any line begun) to new callbacks."""
        self._on_line = on_line
        self._on_too_long = on_too_long

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
