"""The upstream-echo scrubber against combined encodings and awkward secrets (issue 12, item 5).

tests/test_scrubber.py covers each encoding of a well-shaped secret. Here the secrets have awkward
shapes (very short, mostly punctuation, non-ASCII, one inside another) and the echoes chain
encodings (base64 of another case, hex of a percent-encoded value, base64 in groups...). The
named tests are findings of a review: each failed before its fix. The property test decodes the
scrubbed text itself, independently of the scrubber, and looks for what must not be there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import html
import json
import re
import unicodedata
from collections.abc import Callable
from urllib.parse import quote, quote_plus, unquote

import httpx2
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from danube_mcp.danube.client import DanubeClient, DanubeError
from danube_mcp.danube.redact import FRAGMENT, MAX_MESSAGE_CHARS, REDACTED, Scrubber, clean_or_none
from danube_mcp.tool.schema import StoreRequest
from test_scrubber import BENIGN

KEY = "sk-CANARY-KEY-7f3a9c2e41b8d6057a1c3e9f"  # 40 characters
VALUE = "CanaryValue-93kd8Qz2-ñ"  # 22 characters, one non-ASCII
DK_KEY = "dk_live_7Hq2Lm9xCANARYv4Rt8Wp3Zs6Nb1Yc5K"  # holds "CANARY" in its middle
PUNCT = "!@#$%^&*()_+"  # a credential value of punctuation only (12 characters)


def b64(data: str | bytes, *, urlsafe: bool = False) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()


def dropped(text: str, secrets: tuple[str, ...]) -> bool:
    return clean_or_none(text, Scrubber(secrets)) is None


# --------------------------------------------------------------------------------------------
# Findings (each failed before its fix)


@pytest.mark.parametrize(
    "spelling",
    [
        str.swapcase,
        lambda s: " ".join(s),
        "\u200b".join,
        lambda s: "".join(f"&#{ord(c)};" for c in s),
        lambda s: s.encode().hex(),
        lambda s: quote(s.swapcase(), safe=""),
    ],
    ids=["swapcase", "spaced", "zero-width", "html-entities", "hex", "url-of-swapcase"],
)
def test_base64_of_another_spelling_of_the_key_is_dropped(spelling: Callable[[str], str]) -> None:
    """Base64 was matched against the secret's own bytes only: base64 of the key in another case,
    spaced out or entity-encoded went through whole."""
    for encoded in (b64(spelling(KEY)), b64(spelling(KEY), urlsafe=True).rstrip("=")):
        assert dropped(f"upstream said: {encoded}", (KEY, VALUE)), encoded
        assert dropped(f"Authorization: Basic {b64('user:' + spelling(KEY))}", (KEY, VALUE))


@pytest.mark.parametrize("glue", ["Basic+", "token_", "key-", "x"])
def test_base64_with_a_word_glued_on_is_dropped(glue: str) -> None:
    """A form-encoded header ("Basic+dTp...") is one base64-looking run that starts with the word:
    decoded from its first character, every byte after it is misread. Base64 of the key in another
    case, and base64 of base64 of the key, went through."""
    for inner in (KEY.swapcase(), b64(KEY)):
        echo = glue + b64("u:" + inner)
        assert dropped(f"header {echo}", (KEY, VALUE)), echo
        assert dropped(quote_plus(f"Authorization=Basic {b64('u:' + inner)}"), (KEY, VALUE))


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-16"])
def test_base64_and_hex_of_utf16_are_dropped(codec: str) -> None:
    """UTF-16 puts a NUL beside every ASCII character; decoded text with NULs in it was taken for
    noise and not looked at."""
    raw = KEY.encode(codec)
    for echo in (b64(raw), raw.hex()):
        assert dropped(f"key {echo}", (KEY, VALUE)), echo


def test_base64_of_a_percent_encoded_value_is_dropped() -> None:
    """Percent-encoding changes every byte of a value made of punctuation, so the value's own
    base64 is nowhere in the base64 of its percent-encoding."""
    value = "a!b@c#d$e%f^g&h*i(j)k!l@m#n$o%p^"
    assert dropped(f"bad value {b64(quote(value, safe=''))}", (KEY, value))


@pytest.mark.parametrize("size", [4, 8])
def test_base64_in_groups_split_by_spaces_is_dropped(size: int) -> None:
    """Pieces of FRAGMENT bytes were looked for as 9 base64 characters in a row: groups of 4 or 8
    characters split by spaces held none."""
    enc = b64(KEY)
    grouped = " ".join(enc[i : i + size] for i in range(0, len(enc), size))
    assert dropped(f"echo: {grouped}", (KEY, VALUE))


@pytest.mark.parametrize(
    "echo",
    [
        " ".join(f"0x{b:02x}" for b in KEY.encode()),
        ", ".join(f"0x{b:02X}" for b in KEY.encode()),
        b64(KEY).encode().hex(),
        quote("abc!def@ghi#jkl$mno%pqr^", safe="").encode().hex(),
    ],
    ids=["0x-spaced", "0x-commas", "hex-of-base64", "hex-of-percent-encoded"],
)
def test_hex_forms_are_dropped(echo: str) -> None:
    """Hex runs were decoded to letters and digits only, so hex of an encoded secret (base64,
    percent-encoding) stayed encoded; ``0x`` before each byte broke the run into pairs."""
    assert dropped(f"dump: {echo}", (KEY, "abc!def@ghi#jkl$mno%pqr^"))


@pytest.mark.parametrize("mask", ["＊＊＊＊", "∗∗∗∗", "████", "■■■■", "~~~~", "____", "----", "⋯"])
def test_masks_of_other_characters_are_dropped(mask: str) -> None:
    """Only ``*•●·#x``, dots and the ellipsis counted as a mask: fullwidth stars, block characters
    and the like showed the key's last four (or first characters) freely."""
    assert dropped(f"invalid key {mask}{KEY[-4:]}", (KEY, VALUE))
    assert dropped(f"invalid key {KEY[:7]}{mask} here", (KEY, VALUE))


@pytest.mark.parametrize("masked", ["****Qz2-ñ", "…Qz2-ñ", "****z2ñ"])
def test_masked_forms_of_a_value_with_separators_or_non_ascii_are_dropped(masked: str) -> None:
    """The visible end of a mask was read as ASCII letters and digits up to the first separator:
    ``Qz2-ñ`` gave ``qz2``, which is not how the value ends (``qz2ñ``), and ``z2ñ`` gave ``z2``."""
    assert dropped(f"value {masked}", (KEY, VALUE))


@pytest.mark.parametrize("piece", [PUNCT[:8], PUNCT[3:], PUNCT[2:10]])
def test_pieces_of_a_punctuation_value_are_dropped(piece: str) -> None:
    """A value of punctuation was looked for whole only (its letters-and-digits form is empty):
    eight of its twelve characters went through."""
    assert dropped(f"bad value '{piece}' here", (KEY, PUNCT))


def test_hex_of_a_punctuation_value_is_dropped() -> None:
    """Its hex was not looked for at all (only secrets with four letters or digits had one)."""
    assert dropped(f"bad value {PUNCT.encode().hex()}", (KEY, PUNCT))


@pytest.mark.parametrize("value", ["ab", "ab1", "é1"])
def test_base64_of_a_very_short_value_alone_is_dropped(value: str) -> None:
    """Base64 runs of fewer than six characters were never looked at, and a value of one or two
    bytes has no base64 piece at all: a service name that is just its base64 went through."""
    for form in (b64(value), b64(value).rstrip("=")):
        assert dropped(form, (KEY, value)), form


@pytest.mark.parametrize("value", ["Bfnrt9", "t1b2n3r4f5"])
def test_twice_escaped_unicode_is_read_back(value: str) -> None:
    """An escaped backslash was not undone: in \\\\u0072 the second backslash and u0072 made an
    "r", leaving a backslash and an "r" that the next round read as a carriage return, so every b,
    f, n, r and t of a value escaped twice vanished."""
    once = "".join(f"\\u{ord(c):04x}" for c in value)
    assert dropped(f"bad value {json.dumps(once)[1:-1]}", (KEY, value))


@pytest.mark.parametrize("value", ["X%41bc&amp;De\\n9", "p@ss%2Fw&lt;rd", "000:::\\'"])
def test_a_value_that_holds_escapes_is_found_in_another_case(value: str) -> None:
    """Texts are read with entities, percent and backslash escapes undone, but the value was not:
    a value that holds such an escape itself, echoed in upper case or in base64 split into groups
    (no verbatim copy), read as "XABC&DE..." against "X41bcampDe..." and matched nothing."""
    enc = b64(value)
    assert Scrubber((KEY, value)).for_fields()(f"{enc[:4]} {enc[4:8]} {enc[8:]}") == REDACTED
    if value.upper() != value:
        assert dropped(f"value {value.upper()}", (KEY, value))


@pytest.mark.parametrize("secret", ["C:\\Temp\\Net\\Run42x", "dk_A1\\Fb2\\Nc3\\Rd4\\Te5"])
def test_what_only_looks_like_an_escape_after_a_case_change_is_still_found(secret: str) -> None:
    """Texts are read with backslash escapes undone. A secret with a backslash before N, R, T, F
    or B, echoed in lower case, reads as newlines and tabs there, and its letters vanished before
    the check (found by the property test)."""
    assert dropped(f"bad key {secret.lower()}", (secret, VALUE))


@pytest.mark.parametrize("pin", ["2702", "270270", "270270270", "270~70"])
def test_grouped_base64_of_a_pin_is_dropped(pin: str) -> None:
    """Base64 runs were decoded only with a digit or a capital after a letter in them; base64 of a
    PIN can have neither ("MjcwMg==", or "Mjcw Mjcw" once split into groups of four, or "Mjcw
    fjcw" with nothing at all), and its exact pieces are split by the spaces (found by the
    property test)."""
    enc = b64(pin)
    grouped = " ".join(enc[i : i + 4] for i in range(0, len(enc), 4))
    assert dropped(f"pin {grouped} rejected", (KEY, pin)), grouped


def test_a_percent_escape_inside_a_key_escaped_twice_is_still_found() -> None:
    """The same with a key holding "%00": nine of its characters escaped twice read back as
    "cd%00efgh" after two rounds, and the same round undid the "%00" too, leaving "cd", a NUL and
    "efgh": six letters and digits where there were eight (found by the property test)."""
    key = "Zq8w-abcd%00efgh-Lm3x"
    once = "".join(f"\\u{ord(c):04x}" for c in key[7:16])
    assert dropped(f"bad key {json.dumps(once)[1:-1]}", (key, VALUE))


@pytest.mark.parametrize("value", ["00İ", "ßß1"])
def test_grouped_base64_of_a_short_non_ascii_value_is_dropped(value: str) -> None:
    """Decoded base64 was skipped when it had fewer characters in a row than the smallest piece
    looked for, but pieces are counted after casefolding, which lengthens "İ" and "ß": the three
    decoded characters of "00İ" were fewer than the four of its folded form."""
    enc = b64(value)
    assert dropped(f"value {enc[:4]} {enc[4:]}", (KEY, value))


def test_a_secret_inside_another_does_not_hide_a_piece_of_the_outer_one() -> None:
    """The value "CANARY" is inside the key. Replacing it with the marker cut a 20-character piece
    of the key into two 7-character halves, each too short to count; the caller, who knows the
    value, reads the piece whole."""
    piece = DK_KEY[9:29]  # "Hq2Lm9x" + "CANARY" + "v4Rt8Wp"
    assert "CANARY" in piece
    assert dropped(f"key fragment {piece} unknown", (DK_KEY, "CANARY"))
    # and the value alone is still only replaced
    assert clean_or_none("service CANARY not found", Scrubber((DK_KEY, "CANARY"))) == (
        f"service {REDACTED} not found"
    )
    # the same with an inner secret long enough to be a piece of the outer one by itself
    inner = DK_KEY[14:26]
    assert dropped(f"key fragment {DK_KEY[7:33]} unknown", (DK_KEY, inner))
    assert clean_or_none(f"value {inner} rejected", Scrubber((DK_KEY, inner))) == f"value {REDACTED} rejected"


def test_truncation_does_not_make_a_masked_form() -> None:
    """A long text was cut to 297 characters plus "..." without a second look: the cut could
    leave the key's first characters right before the "...", the shape of a masked key."""
    text = "y " * 145 + DK_KEY[:7] + "zzzz tail"  # "dk_live" ends at character 297
    assert len(text) > MAX_MESSAGE_CHARS
    assert clean_or_none(text, Scrubber((DK_KEY, VALUE))) is None
    assert clean_or_none(text, Scrubber(("sk-OTHER-KEY-00000000000000000000", VALUE))) is not None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_client_drops_base64_of_the_key_in_another_case_from_errors_and_fields() -> None:
    """From the client's side: a 400 whose message is base64 of the upper-cased key, and a success
    whose service_name is a Basic header with the key in another case."""
    echoes = {
        "error": b64(KEY.swapcase()),
        "name": "Basic " + b64("danube:" + KEY.swapcase()),
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        if body["service_id"] == "svc_err":
            return httpx2.Response(400, json={"error": {"message": f"bad key {echoes['error']}"}})
        return httpx2.Response(
            200,
            json={
                "success": True,
                "service_id": body["service_id"],
                "service_name": echoes["name"],
                "credential_type": "bearer",
            },
        )

    client = DanubeClient(
        base_url="https://danube.test", api_key=KEY, transport=httpx2.MockTransport(handler)
    )
    async with client:
        with pytest.raises(DanubeError) as info:
            await client.store_credential(
                StoreRequest(service_id="svc_err", credential_type="bearer", credential_value=VALUE)
            )
        result = await client.store_credential(
            StoreRequest(service_id="svc_ok", credential_type="bearer", credential_value=VALUE)
        )
    shown = f"{info.value} {info.value.upstream_message} {result.structured()}"
    for echo in echoes.values():
        assert echo not in shown
    assert not recoverable(shown, (KEY, VALUE)), shown


# --------------------------------------------------------------------------------------------
# The property test: secrets of many shapes, encodings chained, decoded back independently


def _alnum(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def _gentle(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        ch for ch in folded if not (ch.isspace() or unicodedata.category(ch) in ("Pd", "Cf", "Cc"))
    )


def _unescape(text: str) -> str:
    for _ in range(4):
        before = text
        text = html.unescape(text)
        text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
        text = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
        text = unquote(text)
        if text == before:
            break
    return text


def _base64_readings(text: str) -> list[str]:
    """Every run of base64 characters, with whitespace inside or not, at each of four offsets."""
    out: list[str] = []
    for m in re.finditer(r"[A-Za-z0-9+/_=-]+(?:\s+[A-Za-z0-9+/_=-]+)*", text):
        for run in {m.group(), "".join(m.group().split()), *m.group().split()}:
            run = run.replace("-", "+").replace("_", "/").replace("=", "")
            for off in range(4):
                part = run[off:]
                part = part[: len(part) - (len(part) % 4 == 1)]
                with contextlib.suppress(binascii.Error, ValueError):
                    out.append(base64.b64decode(part + "=" * (-len(part) % 4)).decode("utf-8", "replace"))
    return out


def _hex_readings(text: str) -> list[str]:
    """Runs of hex digits (byte pairs may be split by spaces, colons, commas, dashes, or ``0x``)."""
    out = []
    for m in re.finditer(r"(?:0x)?[0-9a-f]{2,}(?:[\s:,-]*(?:0x)?[0-9a-f]{2,})+|[0-9a-f]{4,}", text.lower()):
        digits = re.sub(r"0x|[^0-9a-f]", "", m.group())
        for off in (0, 1):
            part = digits[off:]
            out.append(bytes.fromhex(part[: len(part) - len(part) % 2]).decode("utf-8", "replace"))
    return out


def readings(text: str, depth: int = 3) -> list[str]:
    """What ``text`` says once unescaped, and decoded (base64, hex) ``depth`` levels deep. Only
    unescaped readings count ("000&amp;" does not spell "000a"); both are decoded further."""
    frontier = [text, _unescape(text)]
    seen = [frontier[1]]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            for r in (*_base64_readings(t), *_hex_readings(t)):
                nxt += [r, _unescape(r)]
        seen += nxt[1::2]
        frontier = nxt
    return seen


def recoverable(out: str, secrets: tuple[str, ...]) -> str | None:
    """The first secret (or piece of one) that a reading of ``out`` shows, if any: a FRAGMENT-long
    run of a long secret's letters and digits, the whole of a short one, or for a secret of
    punctuation the whole of it (spacing and case aside)."""
    out = out.replace(REDACTED, " ")
    # Undecodable bytes and control characters end a reading's text (decoded noise is no text).
    texts = [seg for t in readings(out) for seg in re.split(r"[\ufffd\x00-\x08\x0e-\x1f\x7f]", t)]
    alnums = [_alnum(t) for t in texts]
    gentles = [_gentle(t) for t in texts]
    for secret in secrets:
        norm = _alnum(secret)
        if len(norm) >= 2 * FRAGMENT:
            pieces = {norm[i : i + FRAGMENT] for i in range(len(norm) - FRAGMENT + 1)}
            if any(p in a for a in alnums for p in pieces):
                return secret
        elif len(norm) >= 4:
            if any(norm in a for a in alnums):
                return secret
        elif len(g := _gentle(secret)) >= 4 and any(g in t for t in gentles):
            return secret
    return None


def _b64_grouped(s: str) -> str:
    enc = b64(s)
    return " ".join(enc[i : i + 4] for i in range(0, len(enc), 4))


ENCODINGS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "swapcase": str.swapcase,
    "url": lambda s: quote(s, safe=""),
    "url-plus": quote_plus,
    "html-dec": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "html-hex": lambda s: "".join(f"&#x{ord(c):x};" for c in s),
    "html-escape": html.escape,
    "json-ascii": lambda s: json.dumps(s)[1:-1],
    "unicode-escapes": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "spaced": " ".join,
    "zero-width": "\u200b".join,
    "dashed": "-".join,
    "fullwidth": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
    "b64": b64,
    "b64-url-nopad": lambda s: b64(s, urlsafe=True).rstrip("="),
    "b64-grouped": _b64_grouped,
    "basic": lambda s: "Basic " + b64("u:" + s),
    "hex": lambda s: s.encode().hex(),
    "hex-upper-colons": lambda s: ":".join(f"{b:02X}" for b in s.encode()),
    "hex-0x": lambda s: " ".join(f"0x{b:02x}" for b in s.encode()),
}
FIRST_ONLY = {"spaced", "zero-width", "dashed", "fullwidth"}
CONTAINERS = {"b64", "b64-url-nopad", "b64-grouped", "basic", "hex", "hex-upper-colons", "hex-0x"}

_printable = st.characters(min_codepoint=33, max_codepoint=126)
_alnum_chars = st.characters(whitelist_categories=["Lu", "Ll", "Nd"], max_codepoint=0x24F)
_punct = st.sampled_from(list("!@#$%^&*()_+-=[]{};:'\",.<>/?\\|`~"))


def _secret(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(_printable, min_size=min_size, max_size=max_size),  # ASCII, any punctuation
        st.text(_alnum_chars, min_size=min_size, max_size=max_size),  # letters incl. non-ASCII
        st.text(_punct, min_size=min_size, max_size=max_size),  # punctuation only
        st.builds(" ".join, st.lists(st.text(_alnum_chars, min_size=2, max_size=6), min_size=2, max_size=5)),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[str, str, str, str]:
    key = draw(st.one_of(_secret(16, 48), _secret(4, 15)))
    value = draw(
        st.one_of(
            _secret(1, 3),
            _secret(4, 15),
            _secret(16, 48),
            st.just(key),
            st.integers(0, max(0, len(key) - 4)).map(lambda i: key[i : i + 4 + len(key) % 5]),
        )
    )
    echoed = draw(st.sampled_from([key, value]))
    if len(_alnum(echoed)) >= 2 * FRAGMENT and draw(st.booleans()):
        start = draw(st.integers(0, len(echoed) - 12))
        echoed = echoed[start : start + draw(st.integers(12, len(echoed) - start))]
    chain = draw(st.lists(st.sampled_from(sorted(ENCODINGS)), min_size=1, max_size=3))
    # At most two base64 / hex layers; spacing and fullwidth apply to the secret's own characters
    # (spacing out an encoded form, "&-#-x-3-0-;", or fullwidth base64 are not covered).
    assume(sum(name in CONTAINERS for name in chain) <= 2)
    assume(all(name not in FIRST_ONLY for name in chain[1:]))
    encoded = echoed
    for name in chain:
        encoded = ENCODINGS[name](encoded)
    words = st.sampled_from(["invalid", "key", "value", "for", "service", "Error:", "(", ")", "'", "="])
    before = " ".join(draw(st.lists(words, max_size=4)))
    after = " ".join(draw(st.lists(words, max_size=4)))
    return key, value, f"{before} {encoded} {after}".strip(), "+".join(chain)


# Seen failing before the fixes (kept as explicit examples, found by this test's first runs).
@example(scenario=("sk-CANARY-KEY-7f3a9c2e41b8d6057a1c3e9f", "pw9Xk2", b64(KEY.swapcase()), "swapcase+b64"))
@example(scenario=(KEY, VALUE, "key " + _b64_grouped(KEY), "b64-grouped"))
@example(scenario=(KEY, PUNCT, "v " + PUNCT.encode().hex(), "hex"))
# Derandomized: the same 400 cases on every run, so CI cannot fail at random. To search further,
# run it with other settings (a review ran 25,000-30,000 random cases per round this way).
@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(scenario=scenarios())
def test_property_no_recoverable_form_survives(scenario: tuple[str, str, str, str]) -> None:
    key, value, text, chain = scenario
    assume(REDACTED not in text and "redacted" not in _alnum(key + value))
    scrubber = Scrubber((key, value))
    both = (key, value)
    # The fields of a success leave a value shorter than FRAGMENT alone (the model supplied it).
    fields = both if len(value) >= FRAGMENT else (key,)
    for out, secrets in (
        (scrubber(text), both),
        (clean_or_none(text, scrubber) or REDACTED, both),
        (scrubber.for_fields()(text), fields),
    ):
        leaked = recoverable(out, secrets)
        assert leaked is None, (chain, leaked, out)


@pytest.mark.parametrize(
    "benign",
    [
        *BENIGN,
        "Amazon Web Services (AWS) S3 bucket eu-west-1",
        "Request 7f1c2b9e-41aa-4c55-9e3d-2f0b6a8c1d77 failed: HTTP 502 from upstream",
        "--- details ---",
        "See https://danube.example/docs/errors#E1234 (code E1234) for help.",
    ],
)
def test_ordinary_messages_still_pass(benign: str) -> None:
    """The wider checks (masks, base64 and hex decoded) leave ordinary upstream text alone."""
    for secrets in ((KEY, VALUE), (KEY, PUNCT), (DK_KEY, "CANARY"), (KEY, "pw9Xk2")):
        assert clean_or_none(benign, Scrubber(secrets)) == benign, secrets
