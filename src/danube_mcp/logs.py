"""Logging to stderr, with a redaction filter on the handler.

The filter sits on the *handler*, not on a logger, because logger filters do not see records that
propagate from child loggers or that libraries send to the root logger directly (the MCP SDK does
both). For every record it:

* drops records from the SDK and its libraries that are known to carry request bodies or
  argument values (``input_value=...``, ``Received JSON: ...``, and so on), at every level; in an
  access-log line or one of ours such text is withheld instead, so no client can hide a line;
* masks secure-input link tokens by pattern (``/secure-input/<token>``), live, used or expired;
* masks the process-wide secrets (the server's own API key, its access token) everywhere, and a
  call's own secrets (its key, its value: :meth:`SecretRegistry.holding`) only in records logged
  while that call runs, in its own task context: what one caller sends can never blank or drop
  another caller's lines. Encoded or partial forms withhold the message, never the line;
* escapes every control character (C0, DEL, C1 with NEL), ANSI escapes, the Unicode line and
  paragraph separators and bidi overrides, in the message and its arguments: one event, one line,
  nothing a client sends can forge or colour a line. Traceback lines are indented.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, TextIO

from danube_mcp.danube.redact import REDACTED, Scrubber

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
# Loggers whose lines are never dropped for what they contain (a client could otherwise hide its
# own access-log line by putting a marker in a URL): the text is withheld, the event stays.
KEEP_LOGGERS: Final = ("uvicorn.access", "danube_mcp")
WITHHELD: Final = "[log text withheld: it may carry a request body]"

# Exceptions the SDK logs with a traceback when a client simply disconnects (a DELETE, a closed
# stream): normal events, not errors, so they are not printed.
DISCONNECT_EXCEPTIONS: Final = frozenset({"ClosedResourceError", "BrokenResourceError", "EndOfStream"})

# Loggers that print message contents at DEBUG and session ids at INFO: kept at WARNING or above.
NOISY_LOGGERS: Final = ("mcp", "sse_starlette", "httpcore", "hpack")

# The secure-input pages' path (danube_mcp.secure_input.broker.PATH_PREFIX; not imported, as the
# broker imports this module). Whatever follows it in a line is a link token, valid or not.
LINK_PATH: Final = "/secure-input/"
_LINK_TOKEN: Final = re.compile(
    r"(?i)((?:/|%(?:25)?2f)secure-input(?:/|%(?:25)?2f)+)([^\s/?#\"'<>&;,()\[\]\\]+)"
)

# Controls (C0, DEL, C1 incl. NEL), line/paragraph separators, bidi overrides, lone surrogates.
_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_IN_TRACEBACK: Final = re.compile(
    r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_line(text: str) -> str:
    """``text`` with every character that could end, forge or colour a log line escaped."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def _escape_block(text: str) -> str:
    """A traceback: the same escapes except newlines, and every line indented, so no line of it
    can pass for a record of its own."""
    text = _UNSAFE_IN_TRACEBACK.sub(_escape_char, text)
    return "\n".join("  " + line for line in text.split("\n"))


def mask_links(text: str) -> str:
    """Secure-input link tokens (live, used, expired or made up) replaced by the marker."""
    if "secure-input" not in text.lower():
        return text
    return _LINK_TOKEN.sub(lambda m: m.group(1) + REDACTED, text)


class _CallSecrets:
    """The secrets of the calls in flight in one task context, and their scrubber, built once."""

    __slots__ = ("_scrubber", "secrets")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self._scrubber: Scrubber | None = None

    def scrubber(self) -> Scrubber:
        if self._scrubber is None:
            self._scrubber = Scrubber(self.secrets)
        return self._scrubber


_CALL: ContextVar[_CallSecrets | None] = ContextVar("danube_mcp_call_secrets", default=None)


class SecretRegistry:
    """The secrets that must never be printed. Thread-safe; values are held, never shown.

    :meth:`add` / :meth:`remove` are process-wide (the server's own key and access token, live
    link tokens). :meth:`holding` is per call: the secrets travel with the task context, so they
    are masked in that call's own records only, and nothing a caller sends affects anyone else's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._version = 0
        self._scrubber: tuple[int, Scrubber | None] = (0, None)

    def add(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            self._counts[secret] = self._counts.get(secret, 0) + 1
            self._version += 1

    def remove(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            n = self._counts.get(secret, 0) - 1
            if n <= 0:
                self._counts.pop(secret, None)
            else:
                self._counts[secret] = n
            self._version += 1

    @contextmanager
    def holding(self, *secrets: str | None) -> Iterator[None]:
        """Mask ``secrets`` in the records of the current call (this task context and the tasks it
        starts) until the block ends. Use it around one call's work: ``with SECRETS.holding(value,
        key): ...``."""
        current = _CALL.get()
        held = tuple(s for s in secrets if s)
        token = _CALL.set(_CallSecrets((current.secrets if current else ()) + held))
        try:
            yield
        finally:
            _CALL.reset(token)

    def global_scrubber(self) -> Scrubber | None:
        with self._lock:
            version, scrubber = self._scrubber
            if version != self._version:
                held: list[str] = sorted(self._counts, key=len, reverse=True)
                scrubber = Scrubber(held) if held else None
                self._scrubber = (self._version, scrubber)
            return scrubber

    @staticmethod
    def call_scrubber() -> Scrubber | None:
        current = _CALL.get()
        return current.scrubber() if current and current.secrets else None

    def snapshot(self) -> list[str]:
        """The process-wide secrets and those of the current call, longest first."""
        current = _CALL.get()
        with self._lock:
            found = set(self._counts)
        found.update(current.secrets if current else ())
        return sorted(found, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"SecretRegistry({len(self._counts)} secrets)"


SECRETS = SecretRegistry()


class RedactingFilter(logging.Filter):
    """Drops SDK records that carry bodies; masks secrets and link tokens; escapes controls."""

    def __init__(self, registry: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self.registry = registry

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = f"[unformattable log record from {record.name}]"
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
        extra = [t for t in (record.exc_text, record.stack_info) if t]
        if any(marker in text for text in (message, *extra) for marker in DROP_MARKERS):
            if not record.name.startswith(KEEP_LOGGERS):
                return False
            message, record.exc_text, record.stack_info = WITHHELD, None, None
        scrubbers = [sc for sc in (self.registry.global_scrubber(), self.registry.call_scrubber()) if sc]
        message = self._clean(message, scrubbers)
        if record.exc_text:
            record.exc_text = _escape_block(self._clean(record.exc_text, scrubbers, block=True))
        if record.stack_info:
            record.stack_info = _escape_block(self._clean(record.stack_info, scrubbers, block=True))
        record.msg = escape_line(message)
        record.args = None
        return True

    @staticmethod
    def _clean(text: str, scrubbers: list[Scrubber], *, block: bool = False) -> str:
        text = mask_links(text)
        for scrubber in scrubbers:
            safe = scrubber.safe(text)
            if safe is None:
                # An encoded or partial form of a secret: the text goes, the event stays.
                return "[traceback withheld: it held part of a secret]" if block else REDACTED
            text = safe
        return text


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
