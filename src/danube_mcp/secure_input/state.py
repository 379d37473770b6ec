"""Sealed ``requestState`` for 2026-07-28 multi-round-trip requests.

The client echoes ``requestState`` verbatim on its retry, so it is attacker-controlled input. It is
sealed with AES-GCM: the client can neither read nor change it. Inside: the pending entry's id, the
service and credential type of the call, a hash of the caller's identity, an expiry, the round's
phase, and a one-time id that the store claims on use (replay protection). Never the credential,
never a key or token, not even encrypted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import time
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX: Final = "dmcp1."
AAD: Final = b"danube-mcp/requestState/v1"
MAX_STATE_CHARS: Final = 2048

Phase = Literal["ask", "wait"]


class StateError(Exception):
    """The requestState cannot be used; the message says why, for the model."""


@dataclass(frozen=True)
class RequestState:
    entry_id: str
    service_id: str
    credential_type: str
    caller: str
    expires_at: float
    phase: Phase
    once: str  # the single-use id the store claims


class StateSealer:
    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=256))

    def seal(
        self,
        *,
        entry_id: str,
        service_id: str,
        credential_type: str,
        caller: str,
        expires_at: float,
        phase: Phase,
    ) -> str:
        payload = {
            "e": entry_id,
            "s": service_id,
            "t": credential_type,
            "c": caller,
            "x": round(expires_at, 3),
            "p": phase,
            "n": secrets.token_hex(16),
        }
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), AAD)
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open(self, text: str, *, now: float | None = None) -> RequestState:
        """The state, if it is intact and unexpired. Caller, arguments and single use are checked
        by the caller of this method, which knows them."""
        if not isinstance(text, str) or not text.startswith(PREFIX) or len(text) > MAX_STATE_CHARS:
            raise StateError("requestState was not issued by this server")
        raw = text[len(PREFIX) :]
        try:
            blob = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
            if len(blob) < 12 + 16:
                raise ValueError
            data = json.loads(self._aead.decrypt(blob[:12], blob[12:], AAD))
            state = RequestState(
                entry_id=str(data["e"]),
                service_id=str(data["s"]),
                credential_type=str(data["t"]),
                caller=str(data["c"]),
                expires_at=float(data["x"]),
                phase="wait" if data["p"] == "wait" else "ask",
                once=str(data["n"]),
            )
        except (InvalidTag, ValueError, KeyError, TypeError, binascii.Error, json.JSONDecodeError):
            raise StateError("requestState was changed or was not issued by this server") from None
        if state.expires_at <= (time.time() if now is None else now):
            raise StateError("requestState has expired")
        return state
