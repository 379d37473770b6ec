"""Logging to stderr, with a redaction filter on the handler.

The filter sits on the *handler*, not on a logger, because logger filters do not see records that
propagate from child loggers or that libraries send to the root logger directly (the MCP SDK does
both). It does two things:

* drops records from the SDK and its libraries that are known to carry request bodies or
  argument values (``input_value=...``, ``Received JSON: ...``, and so on), at every level;
* replaces every registered secret (the API key, the access token, credential values of calls in
  flight) with a marker in whatever is left.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, TextIO

from danube_mcp.danube.redact import REDACTED, contains_fragment

# Substrings of SDK/library log records that carry message bodies or argument values.
DROP_MARKERS: Final = (
    "input_value=",
    "Received JSON:",
    "Validated client message:",
    "Sending session message to writer:",
    "Sending message via SSE:",
    "Message that failed validation:",
    "Received exception from stream:",
    "Sending client message:",
    "SSE message:",
    "Failed to validate",
    "Failed to parse message",
    "Received message:",
    "Received response with an unknown request ID",
)

# Exceptions the SDK logs with a traceback when a client simply disconnects (a DELETE, a closed
# stream): normal events, not errors, so they are not printed.
DISCONNECT_EXCEPTIONS: Final = frozenset({"ClosedResourceError", "BrokenResourceError", "EndOfStream"})

# Loggers that print message contents at DEBUG and session ids at INFO: kept at WARNING or above.
NOISY_LOGGERS: Final = ("mcp", "sse_starlette", "httpcore", "hpack")


class SecretRegistry:
    """The secrets that must never be printed. Thread-safe; values are held, never shown."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            self._counts[secret] = self._counts.get(secret, 0) + 1

    def remove(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            n = self._counts.get(secret, 0) - 1
            if n <= 0:
                self._counts.pop(secret, None)
            else:
                self._counts[secret] = n

    @contextmanager
    def holding(self, *secrets: str | None) -> Iterator[None]:
        for s in secrets:
            self.add(s)
        try:
            yield
        finally:
            for s in secrets:
                self.remove(s)

    def snapshot(self) -> list[str]:
        with self._lock:
            return sorted(self._counts, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"SecretRegistry({len(self._counts)} secrets)"


SECRETS = SecretRegistry()


class RedactingFilter(logging.Filter):
    """Drops records that carry bodies or values; masks registered secrets in the rest."""

    def __init__(self, registry: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self.registry = registry

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return False  # a record we cannot even format is not worth the risk
        text = message
        if (
            record.exc_info
            and record.exc_info[0] is not None
            and record.exc_info[0].__name__ in DISCONNECT_EXCEPTIONS
            and record.name.startswith("mcp.")
        ):
            return False
        if record.exc_info:
            # Format the traceback now, so the redacted text is what the handler prints.
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            text = text + "\n" + record.exc_text
        if any(marker in text for marker in DROP_MARKERS):
            return False
        secrets = self.registry.snapshot()
        if secrets and any(s in text for s in secrets):
            for s in secrets:
                message = message.replace(s, REDACTED)
                if record.exc_text:
                    record.exc_text = record.exc_text.replace(s, REDACTED)
        if secrets:
            rest = message + (record.exc_text or "")
            if any(contains_fragment(rest, s) for s in secrets):
                return False  # part of a secret (an upstream echo, say): drop the whole line
        # One event, one line: text that came from outside (a header, a query) cannot forge more.
        record.msg = message.replace("\r", "\\r").replace("\n", "\\n")
        record.args = None
        return True


def setup_logging(level: str = "WARNING", stream: TextIO | None = None) -> logging.Handler:
    """Route all logging to stderr through the redaction filter. Safe to call again."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_danube_mcp", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._danube_mcp = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    # Replace any handler a library installed (FastMCP's basicConfig, say), so no record can
    # reach a stream without passing the filter.
    for other in list(root.handlers):
        root.removeHandler(other)
    root.addHandler(handler)
    numeric = logging.getLevelName(level)
    root.setLevel(numeric)
    for name in NOISY_LOGGERS:
        # WARNING at least: the SDK's INFO lines name session ids (and echo unknown ones).
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(max(numeric, logging.INFO))
    # httpx2's per-request INFO line quotes the upstream's reason phrase, which the upstream
    # controls; our own log lines say what happened to each call.
    logging.getLogger("httpx2").setLevel(max(numeric, logging.WARNING))
    logging.captureWarnings(True)
    return handler
