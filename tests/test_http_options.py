"""The exposure rules of the HTTP transports, and Host/Origin matching, as plain functions."""

from __future__ import annotations

import pytest

from danube_mcp.config import ConfigError
from danube_mcp.transports.http_options import Allowlist, HttpOptions


@pytest.mark.parametrize(
    ("opts", "server_key", "bind_known", "words"),
    [
        (HttpOptions(host="0.0.0.0"), False, True, "--allowed-host"),
        (HttpOptions(host="0.0.0.0", allowed_hosts=("a.example",)), True, True, "no access token"),
        (HttpOptions(host="127.0.0.1"), True, False, "no access token"),
        (
            HttpOptions(host="0.0.0.0", allowed_hosts=("a.example",), auth_token="t" * 20, secure_input=True),
            True,
            True,
            "DANUBE_MCP_PUBLIC_URL",
        ),
    ],
)
def test_unsafe_exposures_are_refused(
    opts: HttpOptions, server_key: bool, bind_known: bool, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        opts.check_exposure(server_key=server_key, bind_known=bind_known)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("opts", "server_key", "bind_known"),
    [
        (HttpOptions(host="127.0.0.1"), True, True),
        (HttpOptions(host="::1", secure_input=True), True, True),
        (HttpOptions(host="0.0.0.0", allowed_hosts=("a.example",), require_client_key=True), True, True),
        (HttpOptions(host="0.0.0.0", allowed_hosts=("a.example",)), False, True),
        (HttpOptions(auth_token="t" * 20), True, False),
        (HttpOptions(auth_token="t" * 20, secure_input=True, public_url="https://a.example"), True, False),
    ],
)
def test_safe_exposures_start(opts: HttpOptions, server_key: bool, bind_known: bool) -> None:
    opts.check_exposure(server_key=server_key, bind_known=bind_known)


def test_token_is_not_in_the_repr() -> None:
    assert "secret-token-value" not in repr(HttpOptions(auth_token="secret-token-value"))


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:1", True),
        ("[::1]:8000", True),
        ("mcp.example.com", True),
        ("mcp.example.com:443", True),
        ("MCP.EXAMPLE.COM", True),
        ("mcp.example.com.evil.com", False),
        ("evil.com", False),
        ("localhost:80abc", False),
        ("", False),
        (None, False),
    ],
)
def test_host_allowlist(host: str | None, ok: bool) -> None:
    assert Allowlist.build(("mcp.example.com",), ()).host_ok(host) is ok


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),
        ("http://localhost:3000", True),
        ("https://127.0.0.1", True),
        ("https://app.example.com", True),
        ("https://app.example.com/", True),
        ("http://app.example.com", False),
        ("null", False),
        ("http://evil.com", False),
    ],
)
def test_origin_allowlist(origin: str | None, ok: bool) -> None:
    assert Allowlist.build((), ("https://app.example.com",)).origin_ok(origin) is ok
