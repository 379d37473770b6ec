"""Strict JSON decoding for what clients send, shared by the stdio and HTTP transports."""

from __future__ import annotations

import json
from typing import Any


def loads_strict(data: bytes) -> Any:
    """JSON from UTF-8 bytes only (``json.loads`` on bytes would also take UTF-16 and encoded
    surrogates), with nesting bounded by the interpreter. Raises ``ValueError`` for anything else."""
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def separators_over(data: bytes, limit: int) -> bool:
    """Whether ``data`` holds more than ``limit`` commas and colons outside its strings.

    Every value in a JSON document but the first of each container follows a comma or a colon, so
    this bounds how many values parsing would build, before any parsing. First a count of all
    commas and colons (C speed, microseconds); only when that is over the limit, the exact count:
    escaped backslashes and quotes removed, the text split at the remaining quotes, the pieces
    outside strings counted. Every step is a bytes method, so a 64 KiB body costs well under a
    millisecond even when built to make it slow (``bench/hardening.py``). A body that is not valid
    JSON may be miscounted; it is refused either way."""
    if data.count(b",") + data.count(b":") <= limit:
        return False
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(plain.split(b'"')[::2])
    return outside.count(b",") + outside.count(b":") > limit
