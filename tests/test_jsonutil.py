"""The pre-parse value count of ``danube_mcp.jsonutil.separators_over`` against an independent one."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from danube_mcp.jsonutil import separators_over

# Strings rich in what could fool a byte-level count: quotes, backslashes, commas, colons.
TRICKY = st.text(alphabet=st.sampled_from(list(',:"\\{}[] a\u00e9\u2028')), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TRICKY, inner, max_size=6),
    max_leaves=40,
)


def separators(value: Any) -> int:
    """Commas and colons the compact encoding of ``value`` has outside strings, from the value."""
    if isinstance(value, list):
        return max(len(value) - 1, 0) + sum(separators(v) for v in value)
    if isinstance(value, dict):
        return max(len(value) - 1, 0) + len(value) + sum(separators(v) for v in value.values())
    return 0


@settings(max_examples=400, deadline=None)
@given(VALUES, st.booleans())
def test_the_count_is_exact_outside_strings(value: Any, ascii_only: bool) -> None:
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only).encode()
    n = separators(value)
    assert not separators_over(data, n)
    if n:
        assert separators_over(data, n - 1)


def test_commas_and_colons_inside_strings_do_not_count() -> None:
    value = {"credential_value": ",:" * 5000 + '\\",' * 100}
    assert not separators_over(json.dumps(value).encode(), 1)


def test_tiny_values_are_counted() -> None:
    assert separators_over(json.dumps({"pad": [0] * 2000}).encode(), 1024)
    assert not separators_over(json.dumps({"pad": [0] * 1000}).encode(), 1024)
