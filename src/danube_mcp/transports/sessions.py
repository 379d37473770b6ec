"""Bounds on stateful sessions (initialize-era streamable HTTP and legacy SSE).

2026-07-28 requests open no session and are not counted here. A session belongs to the caller
identity that opened it (a salted hash of its access token and Danube key); each identity may hold
a limited number, and the server as a whole a larger one. Sessions idle for longer than the idle
timeout are closed by the SDK and forgotten here on the same clock.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Final

from danube_mcp.transports.asgi import Message, Send

SESSION_HEADER: Final = b"mcp-session-id"


class SessionLimits:
    def __init__(self, *, total: int, per_caller: int, idle_seconds: float) -> None:
        self.total = total
        self.per_caller = per_caller
        self.idle_seconds = idle_seconds
        # session id -> (owner identity, last request time)
        self._sessions: dict[str, tuple[str, float]] = {}
        self._sse: Counter[str] = Counter()
        # Admitted openings whose answer (and session id) has not come back yet: counted, so that
        # concurrent initialize requests cannot all pass the same free slot.
        self._pending: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._sessions) + sum(self._sse.values()) + sum(self._pending.values())

    def _prune(self, now: float) -> None:
        # Twice the SDK's idle timeout: its clock starts when a request ends, ours when one starts.
        cutoff = now - 2 * self.idle_seconds
        stale = [sid for sid, (_, seen) in self._sessions.items() if seen < cutoff]
        for sid in stale:
            del self._sessions[sid]

    def admit(self, identity: str, *, reserve: bool = False) -> tuple[int, str] | None:
        """None if ``identity`` may open one more session; else (HTTP status, message).

        With ``reserve``, an admitted opening holds its slot until :meth:`release` (call it once
        the answer is sent, whatever it was; a session it opened is counted by then)."""
        self._prune(time.monotonic())
        mine = (
            self._sse[identity]
            + self._pending[identity]
            + sum(1 for owner, _ in self._sessions.values() if owner == identity)
        )
        if mine >= self.per_caller:
            return 429, (
                f"Too many open sessions for this caller (limit {self.per_caller}): close unused "
                "sessions or wait for them to time out"
            )
        if len(self) >= self.total:
            return 503, "Too many open sessions on this server; retry later"
        if reserve:
            self._pending[identity] += 1
        return None

    def release(self, identity: str) -> None:
        self._pending[identity] -= 1
        if self._pending[identity] <= 0:
            del self._pending[identity]

    def opened(self, session_id: str, identity: str) -> None:
        self._sessions[session_id] = (identity, time.monotonic())

    def touch(self, session_id: str) -> None:
        entry = self._sessions.get(session_id)
        if entry is not None:
            self._sessions[session_id] = (entry[0], time.monotonic())

    def owner(self, session_id: str) -> str | None:
        """The identity that opened ``session_id``, or None if no live session has that id."""
        entry = self._sessions.get(session_id)
        if entry is None or entry[1] < time.monotonic() - 2 * self.idle_seconds:
            return None
        return entry[0]

    def closed(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def sse_opened(self, identity: str) -> None:
        self._sse[identity] += 1

    def sse_closed(self, identity: str) -> None:
        self._sse[identity] -= 1
        if self._sse[identity] <= 0:
            del self._sse[identity]

    def watching(self, send: Send, identity: str) -> Send:
        """Wrap ``send`` to record the session a successful opening response creates."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for key, value in message.get("headers", ()):
                    if key.lower() == SESSION_HEADER:
                        self.opened(value.decode("latin-1"), identity)
                        break
            await send(message)

        return wrapped
