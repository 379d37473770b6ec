"""The upstream-echo scrubber against every form of a secret an upstream could echo (issue 12, item 5).

Canary secrets go in encoded, spaced out, masked or cut short; the scrubbed text must hold no
recoverable form of them, while ordinary upstream messages pass untouched.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danube_mcp.danube.redact import REDACTED, Scrubber, alnum_form, clean_message, clean_or_none, scrub

KEY = "sk-CANARY-KEY-7f3a9c2e41b8d6057a1c3e9f"  # 40 characters
VALUE = "CanaryValue-93kd8Qz2-ñ"  # 22 characters, one non-ASCII
SHORT = "pw9Xk2"  # a short credential value
SHORT_KEY = "k7Q2xZ"  # a short (misconfigured) API key
SECRETS = (KEY, VALUE, SHORT)
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u2060"]


def b64(data: str, *, urlsafe: bool = False, pad: bool = True) -> str:
    enc = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data.encode()).decode()
    return enc if pad else enc.rstrip("=")


def entity_hex(s: str) -> str:
    return "".join(f"&#x{ord(c):x};" for c in s)


def entity_dec(s: str) -> str:
    return "".join(f"&#{ord(c)};" for c in s)


def entity_named(s: str) -> str:
    """Named entities where HTML has them (dash, underscore, n-tilde), decimal elsewhere: mixed."""
    named = {"-": "&hyphen;", "_": "&lowbar;", "ñ": "&ntilde;", "a": "a", "C": "&#67;"}
    return "".join(named.get(c, c) for c in s)


ENCODINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json": lambda s: json.dumps(s)[1:-1],
    "json-ascii-quoted": lambda s: json.dumps({"v": s}),
    "url": lambda s: quote(s, safe=""),
    "url-plus": lambda s: quote_plus(s),
    "url-twice": lambda s: quote(quote(s, safe=""), safe=""),
    "upper": str.upper,
    "lower": str.lower,
    "swapcase": str.swapcase,
    "html-hex": entity_hex,
    "html-dec": entity_dec,
    "html-named": entity_named,
    "html-escape": html.escape,
    "spaced": lambda s: " ".join(s),
    "dashed": lambda s: "-".join(s),
    "dotted-upper": lambda s: ".".join(s.upper()),
    "hex-lower": lambda s: s.encode().hex(),
    "hex-upper": lambda s: s.encode().hex().upper(),
    "hex-colons": lambda s: ":".join(f"{b:02X}" for b in s.encode()),
    "hex-escapes": lambda s: "".join(f"\\x{b:02x}" for b in s.encode()),
    "unicode-escapes": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "b64": b64,
    "b64-nopad": lambda s: b64(s, pad=False),
    "b64-url": lambda s: b64(s, urlsafe=True),
    "b64-url-nopad": lambda s: b64(s, urlsafe=True, pad=False),
    "b64-wrapped": lambda s: "\n".join(b64(s * 3)[i : i + 16] for i in range(0, len(b64(s * 3)), 16)),
    "fullwidth": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
}
for _zw in ZERO_WIDTH:
    ENCODINGS[f"zero-width-U+{ord(_zw):04X}"] = _zw.join
for _user in ("", "u", "us", "usr", "user@example.com"):
    for _urlsafe in (False, True):
        for _pad in (False, True):
            ENCODINGS[f"basic-{len(_user)}-{'url' if _urlsafe else 'std'}-{'pad' if _pad else 'nopad'}"] = (
                lambda s, u=_user, us=_urlsafe, p=_pad: (
                    "Authorization: Basic " + b64(f"{u}:{s}", urlsafe=us, pad=p)
                )
            )


@pytest.mark.parametrize("secret", SECRETS, ids=["key", "value", "short-value"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_no_encoded_form_survives(secret: str, encoding: str) -> None:
    echoed = ENCODINGS[encoding](secret)
    text = f"upstream said: {echoed} (request rejected)"
    scrubber = Scrubber(SECRETS)
    out = scrubber(text)
    assert scrubber.safe(text) is None or echoed not in out
    assert_nothing_recoverable(out)


@pytest.mark.parametrize("value", ["ab", "é", "a1"])
@pytest.mark.parametrize("encoding", [e for e in ENCODINGS if e.startswith(("b64", "basic-"))])
def test_a_value_of_a_byte_or_two_does_not_switch_off_the_keys_base64_check(
    value: str, encoding: str
) -> None:
    # Such a value has no base64 piece of its own; it once set the shortest piece looked for to 0,
    # which turned the base64 look-up off for the API key too.
    echoed = ENCODINGS[encoding](KEY)
    out = Scrubber((KEY, value))(f"upstream said: {echoed}")
    assert out == REDACTED
    assert_nothing_recoverable(out, (KEY,))


def assert_nothing_recoverable(out: str, secrets: tuple[str, ...] = SECRETS) -> None:
    """Whatever is left holds no form of any secret this test file knows how to make."""
    for secret in secrets:
        norm = alnum_form(secret)
        assert norm not in alnum_form(out), out
        for encode in ENCODINGS.values():
            form = encode(secret)
            assert form not in out or form == REDACTED, (out, form)


@pytest.mark.parametrize(
    "masked",
    [
        "sk-...3e9f",
        "sk-…3e9f",
        "****3e9f",
        "••••3E9F",
        "xxxx-xxxx-3e9f",
        "sk-CANA****",
        "sk-CANARY-KEY-7f3a...",
        "ending in ...3e9f",
        "key=[REDACTED]3e9f",
    ],
)
def test_masked_forms_of_the_key_are_dropped(masked: str) -> None:
    assert scrub(f"invalid api key {masked} for this org", [KEY, VALUE]) == REDACTED


@pytest.mark.parametrize("fragment", [SHORT[:4], SHORT[1:5], SHORT[2:], VALUE[:12], VALUE[5:15], KEY[12:22]])
def test_fragments_are_dropped(fragment: str) -> None:
    assert scrub(f"bad value '{fragment}' here", SECRETS) == REDACTED


@pytest.mark.parametrize("fragment", [SHORT[:4], VALUE[3:13], KEY[4:14]])
def test_fragments_in_base64_and_hex_are_dropped(fragment: str) -> None:
    for text in (b64(fragment), b64("x" + fragment, urlsafe=True), fragment.encode().hex()):
        assert scrub(f"echo {text}", SECRETS) == REDACTED, text


# Upstream text that holds no secret and must come through unchanged (also used by the
# adversarial tests, with more secret shapes).
BENIGN = [
    "service svc_openai_001 not found",
    "Invalid credential_type: expected bearer or api_key",
    "Rate limit exceeded... try again later",
    "Plaintext credentials are deprecated; store a vault:// or env:// reference instead.",
    "The request body could not be parsed: Expecting value: line 1 column 1 (char 0)",
    "OpenAI",
    "GitHub Enterprise (on-premises)",
    "Service temporarily unavailable. Retry after 30 seconds.",
    "Authorization: Basic " + b64("someone:other-password-123"),
    "see https://danube.example/dashboard/tools/svc_openai_001 for details",
    "key ****a1b2 is revoked",  # someone else's key tail
]


@pytest.mark.parametrize("benign", BENIGN)
def test_ordinary_messages_pass_untouched(benign: str) -> None:
    assert scrub(benign, SECRETS) == benign
    assert clean_or_none(benign, Scrubber(SECRETS)) == benign


def test_verbatim_occurrence_is_replaced_keeping_the_rest() -> None:
    assert scrub(f"value {VALUE} rejected for {KEY}", SECRETS) == f"value {REDACTED} rejected for {REDACTED}"


def test_clean_or_none_tells_dropped_text_apart() -> None:
    sc = Scrubber(SECRETS)
    assert clean_or_none(f"x {b64(VALUE)}", sc) is None
    assert clean_message(f"x {b64(VALUE)}", sc) == REDACTED
    assert clean_or_none("line one\n\x1b[31mline two", sc) == "line one ?[31mline two"


def test_short_key_in_success_fields_is_caught_even_leniently() -> None:
    sc = Scrubber((SHORT_KEY, "a-much-longer-credential-value-0123456789"))
    for name in (SHORT_KEY, f"Service {SHORT_KEY.upper()}", " ".join(SHORT_KEY), f"svc-{SHORT_KEY[:5]}x"):
        assert sc.for_fields()(name) == REDACTED, name


def test_short_value_leniency_only_when_not_strict() -> None:
    """A short value the model itself supplied may occur in a service name (non-strict); after a
    secure-input store the model never saw it, so the name must not carry it."""
    lenient = Scrubber((KEY, "Open")).for_fields()
    strict = Scrubber((KEY, "Open"), strict_fields=True).for_fields()
    assert lenient("OpenAI") == "OpenAI"
    assert "open" not in alnum_form(strict("OpenAI").replace(REDACTED, ""))
    assert Scrubber((KEY, "Open"))("OpenAI") != "OpenAI"  # error text: always the full check


def test_extended_adds_a_secret() -> None:
    sc = Scrubber((KEY,))
    token = "cft_CANARY_9d8c7b6a5f4e3d2c"
    assert sc.extended(token)(f"confirm with {token}") == f"confirm with {REDACTED}"
    assert sc.extended(token)(f"confirm with {b64(token)}") == REDACTED
    assert sc.extended() is sc


def test_repr_holds_nothing() -> None:
    sc = Scrubber(SECRETS)
    sc("warm up " + KEY)
    assert repr(sc) == "Scrubber(...)"


_secret_chars = st.characters(exclude_categories=["Cs"], exclude_characters="[]")


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=12, max_size=40),
    encoding=st.sampled_from(sorted(ENCODINGS)),
    before=st.text(_secret_chars, max_size=20),
    after=st.text(_secret_chars, max_size=20),
)
def test_property_no_encoded_form_survives(secret: str, encoding: str, before: str, after: str) -> None:
    out = scrub(before + " " + ENCODINGS[encoding](secret) + " " + after, [secret])
    norm = alnum_form(secret)
    if len(norm) >= 8:
        assert not any(norm[i : i + 8] in alnum_form(out) for i in range(len(norm) - 7)), out
    assert secret not in out


def test_a_secret_of_a_letter_or_two_drops_the_text_instead_of_shredding_it() -> None:
    """Replacing every "v" would leave "no ser[REDACTED]ice has this ser[REDACTED]ice_id": unreadable,
    and it still says where the letter was. The whole text goes instead."""
    from danube_mcp.danube.redact import Scrubber

    scrubber = Scrubber(["dk_live_key_long_enough_123456", "v"])
    assert scrubber.safe("no service has this service_id") is None
    assert scrubber.safe("no such id") == "no such id"  # text without it is kept
