"""Where pending secure-input entries live between the call, the page and the retry.

One small interface, :class:`PendingStore`, so every flow works the same in one process or many:

* :class:`MemoryStore`, the embedded default: nothing to run, one process;
* a shared store (Redis) implements the same methods for several workers or replicas.

An entry is created by a tool call, opened by its page (looked up by the hash of the link's
token, never the token itself), receives the typed value once, hands it over once to the call
or retry that stores it, and records the outcome for the page. Single-use marks (``claim``) make
a ``requestState`` or any other one-time ticket usable exactly once across everything sharing the
store. Every operation that changes an entry is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import time
from dataclasses import dataclass, field, replace
from typing import Final, Literal, Protocol

import anyio

Flow = Literal["elicit", "mrtr", "link"]
Status = Literal["open", "submitted", "taken", "finished"]


def token_ref(token: str) -> str:
    """The store's name for a link token: a hash, so the store never holds what opens a page."""
    return hashlib.sha256(b"danube-mcp/link-token\x00" + token.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """What the store knows about one request for a credential. Never the value itself."""

    entry_id: str
    service_id: str
    credential_type: str
    caller: str  # a hash identifying the caller that asked; never a key or token
    flow: Flow
    expires_at: float  # wall-clock seconds (time.time()), comparable across machines
    account: str = ""  # a masked hint of the Danube account the value will be stored into
    status: Status = "open"
    ok: bool = False
    outcome: str = ""

    def remaining(self, now: float | None = None) -> float:
        return max(0.0, self.expires_at - (time.time() if now is None else now))

    def is_open(self) -> bool:
        return self.status == "open" and self.remaining() > 0


class StoreUnavailable(Exception):
    """The shared store could not be reached; the message says what happened (no secrets)."""


class TooManyPending(Exception):
    """The caller (or everyone together) has too many secure-input requests open."""


# Open entries allowed at once, per caller and in total: each holds a little memory until it
# expires, and no caller may crowd out the others.
MAX_PENDING_PER_CALLER: Final = 20
MAX_PENDING_TOTAL: Final = 10_000


class PendingStore(Protocol):
    """The state secure input shares between a call, its page and its retry."""

    async def put(self, entry: Entry, token: str) -> None:
        """Add a new entry, reachable from its page by ``token``. Raises :class:`TooManyPending`
        beyond the per-caller or total limit of open entries."""

    async def get(self, entry_id: str) -> Entry | None:
        """The entry, or None once it is gone (discarded, expired)."""

    async def by_token(self, token: str) -> Entry | None:
        """The entry a page link points to, or None."""

    async def submit(self, entry_id: str, value: str) -> bool:
        """Hand the typed value to an open entry. True only for the first submission in time."""

    async def wait_submitted(self, entry_id: str, seconds: float) -> bool:
        """Wait up to ``seconds`` seconds for the entry's value. True when it is there."""

    async def take_value(self, entry_id: str) -> str | None:
        """The submitted value, exactly once; afterwards the store no longer holds it."""

    async def finish(self, entry_id: str, ok: bool, outcome: str) -> None:
        """Record how the store ended, for the page that is waiting to tell the user."""

    async def wait_finished(self, entry_id: str, seconds: float) -> Entry | None:
        """Wait up to ``seconds`` seconds for :meth:`finish`; the finished entry or None."""

    async def discard(self, entry_id: str, outcome: str) -> None:
        """Forget the value; close the entry with ``outcome`` for its page, unless it is finished
        or another call has taken its value (that call finishes it)."""

    async def claim(self, mark: str, ttl: float) -> bool:
        """Record a single-use mark. True the first time, False for every later claim."""

    async def set_link(self, name: str, entry_id: str, ttl: float) -> None:
        """Remember the open link-flow entry under a name (caller, service and type hashed)."""

    async def get_link(self, name: str) -> str | None:
        """The entry id remembered under ``name``, if any."""

    async def clear_link(self, name: str, entry_id: str) -> None:
        """Forget ``name`` if it still points at ``entry_id``."""

    async def aclose(self) -> None:
        """Release connections."""


# A finished entry stays readable this long, so a page waiting for it can still show the outcome.
FINISHED_GRACE: Final = 120.0
# A value typed on a link-flow page waits at least this long for the model's next call, even if
# the link itself would have expired sooner: the user did their part in time.
LINK_SUBMIT_GRACE: Final = 120.0
EXPIRED: Final = "This link expired. Nothing was stored."


def submitted_expiry(entry: Entry, now: float) -> float:
    """The entry's expiry once its value has been typed."""
    return max(entry.expires_at, now + LINK_SUBMIT_GRACE) if entry.flow == "link" else entry.expires_at


@dataclass(eq=False)
class _Slot:
    entry: Entry
    token: str
    value: str | None = field(default=None, repr=False)
    submitted: anyio.Event = field(default_factory=anyio.Event)
    finished: anyio.Event = field(default_factory=anyio.Event)
    gone_at: float = 0.0


class MemoryStore:
    """The embedded store: dictionaries in this process. Atomic because nothing here awaits
    between reading and changing an entry. Expiry runs on the event loop's timers, so a value
    typed and never collected is dropped at its entry's expiry even when nothing else happens;
    open entries are counted, not scanned, so a full store costs nothing extra per call."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._tokens: dict[str, str] = {}
        self._marks: dict[str, float] = {}
        self._links: dict[str, tuple[str, float]] = {}
        self._due: list[tuple[float, int, str, str]] = []  # (when, seq, kind, key), a heap
        self._seq = 0
        self._open_by_caller: dict[str, int] = {}
        self._open_total = 0

    # -- housekeeping --------------------------------------------------------------------------

    def _later(self, when: float, kind: str, key: str) -> None:
        self._seq += 1
        heapq.heappush(self._due, (when, self._seq, kind, key))
        with contextlib.suppress(RuntimeError):  # no running loop: the next call sweeps instead
            asyncio.get_running_loop().call_later(max(0.0, when - time.time()) + 0.01, self._sweep)

    def _sweep(self) -> None:
        now = time.time()
        while self._due and self._due[0][0] <= now:
            _, _, kind, key = heapq.heappop(self._due)
            if kind == "mark":
                if self._marks.get(key, now + 1) <= now:
                    del self._marks[key]
            elif kind == "link":
                found = self._links.get(key)
                if found and found[1] <= now:
                    del self._links[key]
            elif (slot := self._slots.get(key)) is not None:
                if slot.entry.status != "finished":
                    if slot.entry.expires_at <= now:
                        self._close(slot, False, EXPIRED)
                    else:  # the expiry moved (a link-flow value arrived): look again then
                        self._later(slot.entry.expires_at, "entry", key)
                elif slot.gone_at <= now:
                    del self._slots[key]
                    self._tokens.pop(slot.token, None)

    def _close(self, slot: _Slot, ok: bool, outcome: str) -> None:
        if slot.entry.status != "finished":
            caller = slot.entry.caller
            self._open_total -= 1
            left = self._open_by_caller.get(caller, 1) - 1
            if left > 0:
                self._open_by_caller[caller] = left
            else:
                self._open_by_caller.pop(caller, None)
        slot.value = None
        slot.entry = replace(slot.entry, status="finished", ok=ok, outcome=outcome)
        slot.gone_at = time.time() + FINISHED_GRACE
        self._later(slot.gone_at, "entry", slot.entry.entry_id)
        slot.submitted.set()  # wake waiters: they re-read the entry and find it closed
        slot.finished.set()

    def _live(self, entry_id: str) -> _Slot | None:
        slot = self._slots.get(entry_id)
        if slot is None:
            return None
        if slot.entry.status != "finished" and slot.entry.remaining() <= 0:
            self._close(slot, False, EXPIRED)
        return slot

    # -- the interface -------------------------------------------------------------------------

    async def put(self, entry: Entry, token: str) -> None:
        self._sweep()
        if self._open_total >= MAX_PENDING_TOTAL:
            raise TooManyPending("too many secure-input requests are open on this server")
        if self._open_by_caller.get(entry.caller, 0) >= MAX_PENDING_PER_CALLER:
            raise TooManyPending("too many secure-input requests are open for this caller")
        ref = token_ref(token)
        self._slots[entry.entry_id] = _Slot(entry=entry, token=ref)
        self._tokens[ref] = entry.entry_id
        self._open_total += 1
        self._open_by_caller[entry.caller] = self._open_by_caller.get(entry.caller, 0) + 1
        self._later(entry.expires_at, "entry", entry.entry_id)

    async def get(self, entry_id: str) -> Entry | None:
        slot = self._live(entry_id)
        return slot.entry if slot else None

    async def by_token(self, token: str) -> Entry | None:
        entry_id = self._tokens.get(token_ref(token))
        return None if entry_id is None else await self.get(entry_id)

    async def submit(self, entry_id: str, value: str) -> bool:
        slot = self._live(entry_id)
        if slot is None or not slot.entry.is_open():
            return False
        slot.value = value
        expires_at = submitted_expiry(slot.entry, time.time())
        slot.entry = replace(slot.entry, status="submitted", expires_at=expires_at)
        slot.submitted.set()
        return True

    async def wait_submitted(self, entry_id: str, seconds: float) -> bool:
        slot = self._live(entry_id)
        if slot is None:
            return False
        with anyio.move_on_after(min(seconds, slot.entry.remaining())):
            await slot.submitted.wait()
        slot = self._live(entry_id)
        return slot is not None and slot.entry.status == "submitted"

    async def take_value(self, entry_id: str) -> str | None:
        slot = self._live(entry_id)
        if slot is None or slot.entry.status != "submitted":
            return None
        value, slot.value = slot.value, None
        slot.entry = replace(slot.entry, status="taken")
        return value

    async def finish(self, entry_id: str, ok: bool, outcome: str) -> None:
        slot = self._slots.get(entry_id)
        if slot is not None and slot.entry.status != "finished":
            self._close(slot, ok, outcome)

    async def wait_finished(self, entry_id: str, seconds: float) -> Entry | None:
        slot = self._slots.get(entry_id)
        if slot is None:
            return None
        with anyio.move_on_after(seconds):
            await slot.finished.wait()
        return slot.entry if slot.entry.status == "finished" else None

    async def discard(self, entry_id: str, outcome: str) -> None:
        slot = self._slots.get(entry_id)
        if slot is not None and slot.entry.status in ("open", "submitted"):
            self._close(slot, False, outcome)

    async def claim(self, mark: str, ttl: float) -> bool:
        now = time.time()
        self._sweep()
        if self._marks.get(mark, 0.0) > now:
            return False
        self._marks[mark] = now + max(ttl, 1.0)
        self._later(self._marks[mark], "mark", mark)
        return True

    async def set_link(self, name: str, entry_id: str, ttl: float) -> None:
        self._links[name] = (entry_id, time.time() + ttl)
        self._later(self._links[name][1], "link", name)

    async def get_link(self, name: str) -> str | None:
        found = self._links.get(name)
        return found[0] if found and found[1] > time.time() else None

    async def clear_link(self, name: str, entry_id: str) -> None:
        found = self._links.get(name)
        if found and found[0] == entry_id:
            del self._links[name]

    async def aclose(self) -> None:
        for slot in self._slots.values():
            slot.value = None
