"""The upstream-echo scrubber against combined encodings and awkward secrets (issue 12, item 5).

tests/test_scrubber.py covers each encoding of a well-shaped secret. Here the secrets have awkward
shapes (very short, mostly punctuation, non-ASCII, one inside another) and the echoes chain
encodings (base64 of another case, hex of a percent-encoded value, base64 in groups...). The
named tests are findings of a review: each failed before its fix. The property test decodes the
scrubbed text itself, independently of the scrubber, and looks for what must not be there.
"""

from __future__ import annotations

import base64

import pytest

from danube_mcp.danube.redact import MAX_MESSAGE_CHARS, REDACTED, Scrubber, clean_or_none

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
