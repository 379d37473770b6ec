"""Scrubbing text that came back from Danube: no secret of the call may leave the client in it.

An upstream can echo its input: in an error message, a ``detail`` list, a reason phrase, even a
service name, and not always verbatim: JSON- or URL-escaped, as HTML entities, in base64 (alone or
inside a ``Basic`` Authorization header), in hex, in another case, spaced out, interleaved with
zero-width characters, masked (``sk-...abcd``) or cut short. Two passes:

1. every verbatim occurrence (raw, JSON-escaped, URL-encoded) is replaced by a marker, keeping the
   rest of the text readable;
2. what is left is *normalised once* (entities, JSON and percent escapes decoded, NFKC, casefolded,
   everything but letters and digits removed) and checked with substring look-ups against pieces
   of each secret computed once per call; base64 is matched against the secret's own base64 at
   its three byte alignments, without decoding anything. Any hit, or a masked form that shows a
   secret's first or last characters, drops the text whole. Text hidden in hex runs and in
   base64-looking runs (those with a digit or an inner capital) is decoded and put through the
   same check, two levels deep: base64 of the key in another case, hex of a percent-encoded
   value, base64 of base64.

A secret that holds another's verbatim form is a special case of pass 1: the inner one's marker
must not leave the outer one's characters on both sides of it (see ``_straddled``).

Pieces are ``FRAGMENT`` letters and digits of a long secret, or about 60 % (at least 4) of a short
one. Each lookup first tries a few half-length blocks with ``in`` (C speed), so a text that holds
nothing costs tens of microseconds (``bench/scrub_cost.py``).

When in doubt the text is dropped: a neutral marker is cheaper than a leaked key.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Final
from urllib.parse import quote, quote_plus, unquote

REDACTED: Final = "[REDACTED]"
MAX_MESSAGE_CHARS: Final = 300
# How much of an upstream text is read at all: a few hundred characters are shown, and checking a
# quarter of a megabyte of base64 or masks would hold the event loop for a good part of a second.
MAX_SCRUBBED_CHARS: Final = 4096
# A run of this many characters of a secret of at least twice that length counts as a leak.
FRAGMENT: Final = 8
# Shortest piece of a short secret (fewer than 2 * FRAGMENT letters and digits) that counts.
MIN_FRAGMENT: Final = 4
# Secrets with fewer letters and digits than this are checked on a gentler normal form (below).
MIN_ALNUM: Final = 4

# Runs that may be base64 (standard or URL-safe alphabet, padding optional) or hex.
_B64_RUN: Final = re.compile(r"[A-Za-z0-9+/_-]{4,}")
# FRAGMENT bytes at any alignment fix at least this many base64 characters.
_B64_FRAGMENT: Final = (FRAGMENT * 4) // 3 - 1
_HEX_RUN: Final = re.compile(r"[0-9a-f]{8,}")
# Base64 runs, and runs wrapped or grouped with whitespace (``c2st Q0FO ...``), to be decoded.
# Only runs with a hint (a digit, or a capital after a letter) are: base64 of text has one within
# a few characters, and decoding every word of an ordinary message would double what a call costs.
_B64_CHAIN: Final = re.compile(r"[A-Za-z0-9+/_-]{2,}={0,2}(?:[ \t\r\n]+[A-Za-z0-9+/_-]{2,}={0,2})*")
# A digit, a capital after another base64 character, or padding (one charset first: the fast
# scan): base64 of a PIN may have only the padding ("MjcwMg==").
_B64_HINT: Final = re.compile(r"[A-Z0-9=](?:(?<=[A-Za-z0-9+/_-][A-Z])|(?<=[0-9])|(?<=[A-Za-z0-9+/_-]=))")
# Decoded bytes worth a look: as many characters in a row as the smallest piece looked for, none
# of them a control character or undecodable (noise decoded from ordinary words has few such runs);
# NUL is allowed, as UTF-16 puts one after every ASCII character.
_TEXTLIKE: Final = {
    n: re.compile(rf"[^\ufffd\x01-\x08\x0e-\x1f\x7f]{{{n},}}") for n in range(2, FRAGMENT + 1)
}
# How many encodings deep (base64 or hex, inside each other) decoded text is checked again.
_DEPTH: Final = 2
# JSON / Python style escapes an upstream may leave in text. An escaped backslash is undone in
# the same round, so a twice-escaped "r" (\\u0072) becomes \u0072, then r: not a backslash
# and then, next round, a carriage return.
_BACKSLASH_ESC: Final = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|([nrtbf])|([\\/\"']))")
_SIMPLE_ESC: Final = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
# A mask (a run of mask characters, an ellipsis) and the visible parts either side of it.
_MASK: Final = re.compile(r"[*•●·#x∗∙⋅◦○■□▪▫◼◻◾◽█▓▒░~_-]{3,}|\.{2,}|[…⋯]|\[redacted\]|<redacted>")
# The visible parts: letters and digits in any script, with the separators a key has inside.
_HEAD: Final = re.compile(r"([\w.-]+)[\s:=]*$")
_TAIL: Final = re.compile(r"[\s:=_-]*([\w.-]+)")
# Separators a gentle normal form removes: whitespace, dashes, zero-width and other format chars.
_GENTLE_DROP: Final = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad")
# Removed before looking for base64: format characters (whitespace is kept, so words stay apart;
# base64 wrapped across lines is still caught, as each line holds whole pieces of a long secret).
_ZERO_WIDTH: Final = re.compile(r"[\u200b-\u200d\u2060\ufeff\u00ad]+")
_NON_ALNUM: Final = re.compile(r"[\W_]+")


def contains_fragment(text: str, secret: str) -> bool:
    """True if ``text`` holds any ``FRAGMENT``-long piece of a secret of twice that length or more."""
    if len(secret) < FRAGMENT * 2:
        return False
    return any(secret[i : i + FRAGMENT] in text for i in range(len(secret) - FRAGMENT + 1))


def key_tail(key: str | None) -> str | None:
    """The last four characters of a key long enough that they identify it without giving it away."""
    return key[-4:] if key and len(key) >= 16 else None


# --------------------------------------------------------------------------------------------
# Normal forms


def _decode_layers(text: str) -> str:
    """HTML entities, backslash escapes and percent-encoding decoded, a few rounds (they nest)."""
    return _decode_steps(text)[-1]


def _decode_steps(text: str) -> list[str]:
    """``text`` and each different text on the way to :func:`_decode_layers`' result."""
    steps = [text]
    for _ in range(3):
        before = text
        if "&" in text:
            text = html.unescape(text)
            if text != steps[-1]:
                steps.append(text)
        if "\\" in text:
            text = _BACKSLASH_ESC.sub(_unescape_one, text)
            if text != steps[-1]:
                steps.append(text)
        if "%" in text:
            text = unquote(text, errors="replace")
            if text != steps[-1]:
                steps.append(text)
        if text == before:
            break
    return steps


def _unescape_one(m: re.Match[str]) -> str:
    hex4, hex2, simple, itself = m.groups()
    if itself:
        return itself
    if simple:
        return _SIMPLE_ESC[simple]
    return chr(int(hex4 or hex2, 16))


def alnum_form(text: str) -> str:
    """NFKC, casefolded, letters and digits only: spacing, dashes, zero-width characters, quotes
    and escapes all vanish, so every spelling of a secret meets every other in one string."""
    return _NON_ALNUM.sub("", unicodedata.normalize("NFKC", text).casefold())


def _gentle_form(text: str) -> str:
    """NFKC, casefolded, without whitespace, dashes and format characters (punctuation kept): for
    secrets made mostly of punctuation, which the letters-and-digits form would erase."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        ch
        for ch in folded
        if not (ch.isspace() or ch in _GENTLE_DROP or unicodedata.category(ch) in ("Pd", "Cf", "Cc"))
    )


def _hex_decoded(alnum: str, textlike: re.Pattern[str]) -> str:
    """Text hidden in hex runs (either nibble alignment; ``0x`` prefixes dropped), decoded, the
    runs' texts joined: checked again as a whole, so an encoding inside (percent, entities, base64,
    another case) is undone there too."""
    if "0x" in alnum:
        alnum = alnum.replace("0x", "")
    out: list[str] = []
    for m in _HEX_RUN.finditer(alnum):
        run = m.group()
        for off in (0, 1):
            part = run[off:]
            part = part[: len(part) - len(part) % 2]
            out.append(bytes.fromhex(part).decode("utf-8", "replace"))
    return " | ".join(t for t in out if textlike.search(t))


def _b64_decoded(compact: str, joined: str, shortest: int, textlike: re.Pattern[str]) -> str:
    """Text hidden in base64 (either alphabet, padding optional, in groups split by whitespace
    when each group but the last is a whole number of quanta), decoded and joined as above.
    ``joined`` is ``compact`` without whitespace. Groups shorter than ``shortest`` characters are
    not decoded."""
    # The hint is looked for with whitespace removed: in base64 split into groups of four, each
    # group's capital comes after a space ("Mjcw Mjcw" for 270270), and after a letter once joined.
    if not _B64_HINT.search(joined):
        return ""
    runs: list[str] = []
    for chain in _B64_CHAIN.findall(compact):
        tokens = chain.split()
        if len(chain) < shortest or not _B64_HINT.search("".join(tokens)):
            continue
        if len(tokens) == 1:
            runs.append(chain)
            continue
        group: list[str] = []
        for tok in tokens:
            group.append(tok)
            if len(tok) % 4 or tok[-1] == "=":  # else a whole number of quanta: it may go on
                runs.append("".join(group))
                group = []
        if group:
            runs.append("".join(group))
    out: list[str] = []
    for run in runs:
        if len(run) >= shortest and _B64_HINT.search(run):
            out += [t for t in _b64_texts(run) if textlike.search(t)]
    return " | ".join(out)


def _holds(outer: str, inner: str, forms: set[str]) -> bool:
    """Whether ``outer`` holds one of ``inner``'s verbatim forms (the escaped ones have \\, % or +)."""
    if inner in outer:
        return True
    return ("\\" in outer or "%" in outer or "+" in outer) and any(v in outer for v in forms)


def _straddled(text: str, probes: _Probes) -> bool:
    """Whether a verbatim form of a secret held inside another stands in ``text`` between
    characters of the outer one ("Hq2Lm9x" CANARY "v4Rt8Wp"): replaced by the marker, it would
    leave two pieces each too short to count, which whoever knows the inner one joins up."""
    for outer in probes.outer:  # whole occurrences of the outer secret go first, as in safe()
        text = text.replace(outer, REDACTED)
    for inner, outer, places in probes.nested:
        at = text.find(inner)
        while at >= 0:
            end = at + len(inner)
            for p in places:
                before = _common(reversed(text[max(0, at - FRAGMENT) : at]), reversed(outer[:p]))
                after = _common(text[end : end + FRAGMENT], outer[p + len(inner) :])
                if before + after >= 2 and before + after + len(inner) >= FRAGMENT:
                    return True
            at = text.find(inner, at + 1)
    return False


def _common(a: Iterable[str], b: Iterable[str]) -> int:
    """How many characters two strings share from their start, case aside."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y and x.casefold() != y.casefold():
            break
        n += 1
    return n


def _b64_texts(run: str) -> Iterator[str]:
    """``run`` decoded as base64 from each of its first four characters (a word may be glued on
    in front: "Basic+dXNl", "key_c2st"), padding or no padding."""
    if "-" in run or "_" in run:
        run = run.replace("-", "+").replace("_", "/")
    if "=" in run:
        run = run.replace("=", "")
    for i in range(4):
        part = run[i:]
        cut = len(part) % 4
        part = part[:-1] if cut == 1 else part + "=" * (-cut % 4)
        yield binascii.a2b_base64(part).decode("utf-8", "replace")


def _b64_spans(n: int) -> list[tuple[int, int, int]]:
    """For an ``n``-byte secret after ``k`` bytes of anything (k = 0, 1, 2: every alignment), the
    base64 characters whose six bits all come from the secret: (k, first, end)."""
    return [(k, -(-8 * k // 6), 8 * (k + n) // 6) for k in (0, 1, 2)]


def _b64_middles(secret: bytes) -> list[str]:
    """Base64 of ``secret`` at each of the three byte alignments it can have inside a longer
    plaintext (``user:secret`` in a Basic header, say), cut to the characters that depend on the
    secret alone (padding and neighbours excluded), in both alphabets."""
    out: list[str] = []
    for k, first, end in _b64_spans(len(secret)):
        if end - first < 4:
            continue
        middle = base64.b64encode(b"\0" * k + secret + b"\0\0").decode()[first:end]
        out += [middle, middle.replace("+", "-").replace("/", "_")]
    return out


def _b64_min_len(n: int, whole: bool) -> int:
    """Length of the shortest base64 piece looked for, for an ``n``-byte secret."""
    if n >= 2 * FRAGMENT:
        return _B64_FRAGMENT
    n = n if whole else _fragment_len(n)
    return min((end - first for _, first, end in _b64_spans(n) if end - first >= 4), default=0)


class _Pieces:
    """All ``size``-long substrings of some source strings, looked for in a text.

    Any such substring contains one of the source's blocks of ``(size + 1) // 2`` characters
    starting at a multiple of that length, so a few C-level ``in`` checks rule out almost every
    text; the sliding comparison (and the set it needs) only runs after a block matched."""

    __slots__ = ("_grams", "blocks", "size", "sources")

    def __init__(self, size: int, sources: Iterable[str]) -> None:
        self.size = size
        self.sources = tuple(sources)
        b = (size + 1) // 2
        self.blocks = frozenset(src[i : i + b] for src in self.sources for i in range(0, len(src) - b + 1, b))
        self._grams: frozenset[str] | None = None

    def found_in(self, text: str) -> bool:
        if not any(map(text.__contains__, self.blocks)):
            return False
        if self._grams is None:
            self._grams = frozenset(g for src in self.sources for g in _windows(src, self.size))
        return not self._grams.isdisjoint(_windows(text, self.size))


def _group(pairs: Iterable[tuple[int, str]]) -> tuple[_Pieces, ...]:
    by_size: dict[int, list[str]] = {}
    for size, src in pairs:
        by_size.setdefault(size, []).append(src)
    return tuple(_Pieces(size, srcs) for size, srcs in by_size.items())


def _windows(text: str, size: int) -> Iterator[str]:
    """Every ``size``-long slice of ``text``, iterated in C (no Python frame per slice)."""
    n = len(text) - size + 1
    return map(text.__getitem__, map(slice, range(n), range(size, n + size)))


def _fragment_len(n: int) -> int:
    """How long a piece of a secret (of ``n`` letters and digits) must be to count as a leak."""
    if n >= 2 * FRAGMENT:
        return FRAGMENT
    return min(n, FRAGMENT, max(MIN_FRAGMENT, math.ceil(0.6 * n)))


def _variants(secret: str) -> set[str]:
    """The verbatim forms replaced by the marker: raw, JSON-escaped, URL-encoded."""
    out = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret, safe=""),
    }
    return {v for v in out if v}


class _Probes:
    """What one set of secrets looks like after normalisation, computed once.

    ``secrets`` pairs each secret with ``whole``: when true, a secret shorter than ``2 * FRAGMENT``
    letters and digits counts only whole, not in pieces (see :meth:`Scrubber.for_fields`)."""

    __slots__ = (
        "_b64",
        "alnum",
        "b64_decode_min",
        "b64_min",
        "gentle",
        "hexes",
        "nested",
        "norms",
        "outer",
        "raw",
        "secrets",
        "textlike",
        "variants",
    )

    def __init__(self, secrets: list[tuple[str, bool]]) -> None:
        plain = [s for s, _ in secrets]
        self.secrets = secrets
        forms = {s: _variants(s) for s in plain}
        self.variants = sorted(set().union(*forms.values()), key=len, reverse=True)
        # Raw FRAGMENT-long pieces of long secrets (catches pieces that are mostly punctuation).
        self.raw = _group((FRAGMENT, s) for s in plain if len(s) >= 2 * FRAGMENT)
        alnum: list[tuple[int, str]] = []
        gentle: list[tuple[int, str]] = []
        hexes: set[str] = set()
        norms: set[str] = set()
        # Texts are read with escapes undone (entities, backslashes, percent): a secret holding
        # such an escape itself ("000:::\\'") is also looked for as it reads once they are undone.
        unescaped = [
            (u, whole)
            for s, whole in secrets
            if ("&" in s or "\\" in s or "%" in s) and (u := _decode_layers(s)) != s
        ]
        for s, whole in [*secrets, *unescaped]:
            norm = alnum_form(s)
            if len(s.encode()) >= 4:  # punctuation-only secrets have a hex form too
                hexes.add(s.encode().hex())
            if len(norm) < MIN_ALNUM or len(norm) * 2 < len(s.strip()):
                # Mostly punctuation: pieces count as for any short secret, not only the whole.
                g = _gentle_form(s)
                if g:
                    gentle.append((len(g) if whole else _fragment_len(len(g)), g))
            if len(norm) < MIN_ALNUM:
                continue
            alnum.append(
                (len(norm) if whole and len(norm) < 2 * FRAGMENT else _fragment_len(len(norm)), norm)
            )
            if len(norm) >= 8:
                norms.add(norm)
        self.alnum = _group(alnum)
        self.gentle = _group(gentle) if gentle else ()
        self.hexes = frozenset(hexes)
        self.norms = frozenset(norms)
        self._b64: tuple[_Pieces, ...] | None = None
        # The shortest base64 piece looked for: shorter runs need not wake the base64 check. A
        # secret too short to have any piece (0: a value of a byte or two) must not switch the
        # check off for the others (the key).
        lengths = (_b64_min_len(len(s.encode()), whole) for s, whole in secrets)
        self.b64_min = min((n for n in lengths if n), default=0)
        # Decoded text shorter than the smallest piece looked for (in bytes: a character is at
        # least one) cannot hold one: base64 runs shorter than its encoding are not decoded. The
        # pieces are counted after NFKC and casefolding, which can lengthen non-ASCII text ("İ"
        # is two characters then): the count is divided by the most any character grows.
        sizes = [p.size for p in (*self.alnum, *self.gentle)] + [7] * bool(norms or self.raw)
        grows = max((len(_gentle_form(c)) for s in plain if not s.isascii() for c in s), default=1)
        smallest = max(2, -(-min(sizes, default=2) // max(1, grows)))
        self.b64_decode_min = max(3, -(-4 * smallest // 3))
        self.textlike = _TEXTLIKE[min(FRAGMENT, smallest)]
        # A secret holding another's verbatim form ("dk_...x7CANARYv4..." holding "CANARY"): the
        # marker that replaces the inner one would cut a piece of the outer one into parts too
        # short to count, while whoever knows the inner one reads it whole (see Scrubber.safe).
        self.nested = [
            (v, w, tuple(m.start() for m in re.finditer(f"(?={re.escape(v)})", w)))
            for s in plain
            for t in plain
            if t != s and _holds(s, t, forms[t])
            for w in forms[s]
            for v in forms[t]
            if len(v) >= MIN_FRAGMENT and v in w
        ]
        self.outer = sorted({w for _, w, _ in self.nested}, key=len, reverse=True)

    def b64(self) -> tuple[_Pieces, ...]:
        if self._b64 is None:  # only once some text had a run that may be base64
            pairs: list[tuple[int, str]] = []
            for s, whole in self.secrets:
                raw = s.encode()
                if len(raw) >= 2 * FRAGMENT:
                    pairs += [(min(len(m), _B64_FRAGMENT), m) for m in _b64_middles(raw)]
                    continue
                # A short secret: its own base64 and, unless only whole counts, its pieces'.
                size = len(raw) if whole else _fragment_len(len(raw))
                for i in range(len(raw) - size + 1):
                    pairs += [(len(m), m) for m in _b64_middles(raw[i : i + size])]
            self._b64 = _group(pairs)
        return self._b64

    def hit(self, candidate: str) -> bool:
        return any(p.found_in(candidate) for p in self.alnum)

    def leaks(self, text: str, depth: int = _DEPTH) -> bool:
        """Whether ``text`` (already stripped of verbatim forms) still holds a recoverable form.
        Text decoded from hex or base64 runs is checked again the same way, ``depth`` levels."""
        if any(p.found_in(text) for p in self.raw):
            return True
        *partly, decoded = _decode_steps(text)
        alnum = alnum_form(decoded)
        if self.hit(alnum) or any(h in alnum for h in self.hexes):
            return True
        # Undoing escapes can also eat what only looks like one: a key's "\F00", echoed in lower
        # case, reads as a form feed and "00"; its "%00", escaped twice, as a NUL once the
        # backslashes are undone. The text as it stands and each step on the way are checked too.
        if partly and any(self.hit(alnum_form(t)) for t in partly):
            return True
        if self.gentle:
            gentle = _gentle_form(decoded)
            if any(p.found_in(gentle) for p in self.gentle):
                return True
            if partly and any(p.found_in(_gentle_form(t)) for t in partly for p in self.gentle):
                return True
        if depth:  # "" when the text has no hex run (0x prefixes dropped there, not here too)
            hidden = _hex_decoded(alnum, self.textlike)
            if hidden and self.leaks(hidden, depth - 1):
                return True
        compact = _ZERO_WIDTH.sub("", decoded)
        # Looked for with whitespace removed: base64 split into groups ("Mjcw fjcw") has its pieces
        # cut by the spaces, and may have nothing that makes it worth decoding. (Whether to look
        # at all still depends on the runs as they stand: joined words would wake it every time.)
        joined = "".join(compact.split())
        if (
            self.b64_min
            and any(len(r) >= self.b64_min for r in _B64_RUN.findall(compact))
            and any(p.found_in(joined) for p in self.b64())
        ):
            return True
        if depth and len(compact) >= self.b64_decode_min:
            # Base64 of another spelling (another case, percent-encoded, spaced out, hex...).
            hidden = _b64_decoded(compact, joined, self.b64_decode_min, self.textlike)
            if hidden and self.leaks(hidden, depth - 1):
                return True
        return bool(self.norms) and self._masked(decoded)

    def _masked(self, decoded: str) -> bool:
        """A masked form (``sk-...abcd``, ``****abcd``) that shows a secret's first or last chars."""
        if not decoded.isascii():
            decoded = unicodedata.normalize("NFKC", decoded)  # fullwidth stars, "‥"
        folded = decoded.casefold()
        for m in _MASK.finditer(folded):
            before = _HEAD.search(folded, max(0, m.start() - 64), m.start())
            head = alnum_form(before.group(1)) if before else ""
            # The shown start may follow a word of its own ("key=sk-CANA", "id.sk-CANA").
            if any(n.startswith(head[i:]) for i in range(len(head) - 3) for n in self.norms):
                return True
            after = _TAIL.match(folded, m.end(), m.end() + 64)
            tail = alnum_form(after.group(1)) if after else ""
            # The shown end may be followed by a word of its own ("****3e9f.x", "…Qz2-ñ").
            if any(n.endswith(tail[:i]) for i in range(3, len(tail) + 1) for n in self.norms):
                return True
        return False


class Scrubber:
    """Removes a call's secrets from text that came from the upstream.

    Every verbatim occurrence becomes a fixed marker; if any recoverable form of a secret is left
    after that (encoded, spaced out, masked, a fragment), the whole text becomes the marker. One
    per call; what it needs is computed on first use, once.

    ``strict_fields``: the value was typed on a secure-input page and the model never saw it. The
    client then passes on no upstream free text at all (see :attr:`strict`), and the fields of a
    successful answer get the full check however short the value is.
    """

    __slots__ = ("_field_probes", "_lenient", "_probes", "_secrets", "known", "strict")

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
        self.strict = strict_fields
        self._lenient = _lenient
        self._probes: _Probes | None = None
        self._field_probes: Scrubber | None = None

    def _prepare(self) -> _Probes:
        # Lenient (fields of a success the model asked for): short values whole, not in pieces.
        # The first secret is the API key (see DanubeClient.store_credential): never lenient.
        lenient = self._lenient
        self._probes = _Probes([(s, lenient and i > 0) for i, s in enumerate(self._secrets)])
        return self._probes

    def safe(self, text: str) -> str | None:
        """``text`` with verbatim secrets replaced by the marker, or None if anything is left."""
        probes = self._probes or self._prepare()
        if probes.nested and _straddled(text, probes):
            return None
        for variant in probes.variants:
            if variant in text:
                if len(variant) < MIN_FRAGMENT:  # a letter or two: replacing would shred the text
                    return None
                text = text.replace(variant, REDACTED)
        return None if probes.leaks(text) else text

    def __call__(self, text: str) -> str:
        out = self.safe(text)
        return REDACTED if out is None else out

    def for_fields(self) -> Scrubber:
        """For the fields of a successful answer (a service name, say). The key is always checked
        fully. Unless strict, a credential value shorter than ``FRAGMENT`` is not looked for (the
        model supplied it; a service name that happens to contain it is left alone) and one shorter
        than ``2 * FRAGMENT`` only whole. Error texts always get the full check."""
        if self.strict or all(len(v) >= 2 * FRAGMENT for v in self._secrets[1:]):
            return self  # nothing short enough to be treated differently
        if self._field_probes is None:
            # The first secret is the API key (see DanubeClient.store_credential): always checked.
            kept = [s for i, s in enumerate(self._secrets) if i == 0 or len(s) >= FRAGMENT]
            self._field_probes = Scrubber(kept, known=self.known, _lenient=True)
        return self._field_probes

    def extended(self, *extra: str) -> Scrubber:
        """The same scrubber with more secrets (a ``confirm_token`` an answer carried, say)."""
        extra_secrets = [e for e in extra if e and e not in self._secrets]
        if not extra_secrets:
            return self
        return Scrubber([*self._secrets, *extra_secrets], known=self.known, strict_fields=self.strict)

    def __repr__(self) -> str:
        return "Scrubber(...)"


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """Remove ``secrets`` from ``text`` (see :class:`Scrubber`)."""
    return Scrubber(secrets)(text)


def clean_message(text: str, scrubber: Scrubber) -> str:
    """One bounded, printable line with no secret in it (the marker alone if it was unsafe)."""
    return clean_or_none(text, scrubber) or REDACTED


def clean_or_none(text: str, scrubber: Scrubber) -> str | None:
    """One bounded, printable line with no secret in it, or None if the text had to be dropped."""
    # Scrub before reshaping: collapsing whitespace could otherwise break an exact match. Only
    # the start is read; what is shown comes from it, and all of it is checked.
    raw = scrubber.safe(str(text)[:MAX_SCRUBBED_CHARS])
    if raw is None:
        return None
    line = " ".join(raw.split())  # one line: no newlines or control runs
    if not line.isprintable():
        line = "".join(ch if ch.isprintable() else "?" for ch in line)
    if line != raw:
        line2 = scrubber.safe(line)
        if line2 is None:
            return None
        line = line2
    if len(line) > MAX_MESSAGE_CHARS:
        # Checked again: the "..." is a mask of its own, and the cut may have left a secret's
        # first characters right before it ("... dk_live" + "...").
        return scrubber.safe(line[: MAX_MESSAGE_CHARS - 3] + "...")
    return line
