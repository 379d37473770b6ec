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
