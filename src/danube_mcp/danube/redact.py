"""Scrubbing text that came back from Danube: no secret of the call may leave the client in it.

An upstream can echo its input: in an error message, a ``detail`` list, a reason phrase, even a
service name. Every occurrence of the API key or the credential value (raw or JSON-escaped) is
replaced by a marker, and text that still holds a fragment of one is dropped whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

REDACTED: Final = "[REDACTED]"
MAX_MESSAGE_CHARS: Final = 300
# A run of this many characters of a secret of at least twice that length counts as a leak.
FRAGMENT: Final = 8


def contains_fragment(text: str, secret: str) -> bool:
    """True if ``text`` holds any ``FRAGMENT``-long piece of a secret of twice that length or more."""
    if len(secret) < FRAGMENT * 2:
        return False
    return any(secret[i : i + FRAGMENT] in text for i in range(len(secret) - FRAGMENT + 1))


def key_tail(key: str | None) -> str | None:
    """The last four characters of a key long enough that they identify it without giving it away."""
    return key[-4:] if key and len(key) >= 16 else None


def _variants(secret: str) -> set[str]:
    """The forms in which an upstream might echo a secret back: raw, JSON-escaped, URL-encoded."""
    out = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }
    return {v for v in out if v}


class Scrubber:
    """Removes a call's secrets from text that came from the upstream.

    Every occurrence (raw or JSON-escaped) becomes a fixed marker. If a fragment of a secret is
    still present after that (an upstream that echoes a truncated value, say), the text is dropped
    altogether rather than risk passing part of a secret on. One per call; what it needs is
    computed on first use, once.
    """

    __slots__ = ("_grams", "_lenient", "_secrets", "_variants", "known")

    def __init__(
        self,
        secrets: Iterable[str | None],
        *,
        known: Iterable[str] = (),
        strict_fields: bool = False,
        _lenient: bool = False,
    ) -> None:
        self._secrets = [s for s in secrets if s]
        # Values the caller sent itself (service id, type): an answer that echoes them is fine.
        self.known = frozenset(known)
        self._variants: list[str] | None = None
        self._grams: frozenset[str] | None = None
        # strict_fields: the fields of a successful answer get the full scrub too.
        self._lenient: Scrubber | bool = self if strict_fields else _lenient

    def _prepare(self) -> tuple[list[str], frozenset[str]]:
        secrets = self._secrets
        if self._lenient is True:
            secrets = [s for s in secrets if len(s) >= FRAGMENT]
        self._variants = sorted({v for s in secrets for v in _variants(s)}, key=len, reverse=True)
        # Every FRAGMENT-long piece of each long-enough secret: contains_fragment, precomputed.
        self._grams = frozenset(
            s[i : i + FRAGMENT]
            for s in secrets
            if len(s) >= 2 * FRAGMENT
            for i in range(len(s) - FRAGMENT + 1)
        )
        return self._variants, self._grams

    def __call__(self, text: str) -> str:
        variants, grams = (self._variants, self._grams) if self._variants is not None else self._prepare()
        assert grams is not None
        for variant in variants:
            if variant in text:
                text = text.replace(variant, REDACTED)
        if grams and any(text[i : i + FRAGMENT] in grams for i in range(len(text) - FRAGMENT + 1)):
            return REDACTED
        return text

    def for_fields(self) -> Scrubber:
        """For the fields of a successful answer (a service name, say): only secrets of at least
        FRAGMENT characters are looked for, so a short credential that happens to occur in a
        service's name does not mangle it. Error texts always get the full scrub."""
        if not isinstance(self._lenient, Scrubber):
            self._lenient = Scrubber(self._secrets, known=self.known, _lenient=True)
        return self._lenient

    def __repr__(self) -> str:
        return "Scrubber(...)"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Remove ``secrets`` from ``text`` (see :class:`Scrubber`)."""
    return Scrubber(secrets)(text)


def clean_message(text: str, scrubber: Scrubber) -> str:
    """One bounded, printable line with no secret in it."""
    # Scrub before reshaping: collapsing whitespace could otherwise break an exact match.
    raw = scrubber(str(text))
    line = " ".join(raw.split())  # one line: no newlines or control runs
    if not line.isprintable():
        line = "".join(ch if ch.isprintable() else "?" for ch in line)
    if line != raw:
        line = scrubber(line)
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return line
