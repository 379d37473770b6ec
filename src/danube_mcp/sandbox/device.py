"""Danube's device flow (RFC 8628 style), held in memory: codes, approval and one-time key delivery.

A client asks for a code pair; a person approves the short ``user_code`` with a key they already have;
the client polls with the long ``device_code`` and gets a brand-new API key exactly once. Pending codes
live only in this process (a restart forgets them); issued keys are kept in the database (as HMACs).
Device codes are kept only as SHA-256 digests, so a memory dump of a pending grant cannot be replayed.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

#: RFC 8628 §6.1: consonants only, no vowels (no words), no look-alikes.
USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_CHARS: Final = 8
DEFAULT_TTL: Final = 600
DEFAULT_INTERVAL: Final = 5
#: RFC 8628 §3.5: each slow_down adds 5 seconds to the interval for that grant.
SLOW_DOWN_STEP: Final = 5
MAX_PENDING: Final = 1000
MAX_CLIENT_NAME_CHARS: Final = 100

Status = Literal["pending", "approved", "denied", "delivered"]


def _digest(device_code: str) -> str:
    return hashlib.sha256(device_code.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_user_code(text: str) -> str:
    """Upper-case, without the dash or spaces a person may type: ``bcdf-ghjk`` → ``BCDFGHJK``."""
    return "".join(ch for ch in text.upper() if ch not in "- ")


def format_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


@dataclass
class Grant:
    digest: str
    user_code: str
    client_name: str
    expires_at: float
    interval: float
    status: Status = "pending"
    #: The account (owner) whose key approved this grant; the issued key reaches that account.
    account: str | None = None
    last_poll: float | None = field(default=None)


class DeviceError(Exception):
    """A device-flow refusal: becomes Danube's error envelope with this status and code."""

    def __init__(self, status: int, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class NewCode:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


class DeviceFlow:
    """The grants of one sandbox process. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        interval: float = DEFAULT_INTERVAL,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.interval = interval
        self.max_pending = max_pending
        self._clock = clock
        self._by_digest: dict[str, Grant] = {}
        self._by_user_code: dict[str, Grant] = {}

    def _purge(self, now: float) -> None:
        for grant in [g for g in self._by_digest.values() if g.expires_at <= now]:
            del self._by_digest[grant.digest]
            self._by_user_code.pop(grant.user_code, None)

    def start(self, client_name: str) -> NewCode:
        now = self._clock()
        self._purge(now)
        if len(self._by_digest) >= self.max_pending:
            raise DeviceError(429, "too_many_pending", "too many device codes are pending; try again later")
        device_code = secrets.token_urlsafe(32)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_CHARS))
        while user_code in self._by_user_code:
            user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_CHARS))
        grant = Grant(_digest(device_code), user_code, client_name, now + self.ttl, self.interval)
        self._by_digest[grant.digest] = grant
        self._by_user_code[user_code] = grant
        return NewCode(
            device_code, format_user_code(user_code), math.ceil(self.ttl), math.ceil(self.interval)
        )

    def _grant_for_user_code(self, user_code: str) -> Grant:
        now = self._clock()
        grant = self._by_user_code.get(normalize_user_code(user_code))
        if grant is None:
            raise DeviceError(404, "unknown_user_code", "no pending device code has this user_code")
        if grant.expires_at <= now:
            self._purge(now)
            raise DeviceError(410, "expired_token", "this code has expired; start the sign-in again")
        if grant.status != "pending":
            raise DeviceError(409, "already_decided", f"this code was already {grant.status}")
        return grant

    def approve(self, user_code: str, account: str) -> str:
        """Approve a pending code for ``account``; returns the client name shown to the person."""
        grant = self._grant_for_user_code(user_code)
        grant.status, grant.account = "approved", account
        return grant.client_name

    def deny(self, user_code: str) -> str:
        grant = self._grant_for_user_code(user_code)
        grant.status = "denied"
        return grant.client_name

    def poll(self, device_code: str) -> Grant:
        """One poll. Returns the grant once approved (and marks it delivered); else raises DeviceError."""
        now = self._clock()
        grant = self._by_digest.get(_digest(device_code))
        if grant is None:
            raise DeviceError(400, "invalid_grant", "unknown device_code; start the sign-in again")
        if grant.status == "delivered":
            raise DeviceError(410, "device_code_used", "this device_code was already exchanged for a key")
        if grant.expires_at <= now:
            self._purge(now)
            raise DeviceError(410, "expired_token", "the device code has expired; start the sign-in again")
        if grant.status == "denied":
            raise DeviceError(403, "access_denied", "the request was denied")
        if grant.status == "approved":
            grant.status = "delivered"
            return grant
        too_soon = grant.last_poll is not None and now - grant.last_poll < grant.interval
        grant.last_poll = now
        if too_soon:
            grant.interval += SLOW_DOWN_STEP
            raise DeviceError(
                429,
                "slow_down",
                f"polling too fast; wait at least {math.ceil(grant.interval)} seconds between polls",
                retry_after=math.ceil(grant.interval),
            )
        raise DeviceError(428, "authorization_pending", "the user has not approved this code yet")
