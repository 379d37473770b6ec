"""Settings: every variable, every rule, one clear line per problem that never shows the value."""

from __future__ import annotations

import pytest

from danube_mcp.config import DEFAULT_API_URL, ConfigError, load_settings

KEY = "dk-CANARY-config-0123456789"


def test_defaults() -> None:
    s = load_settings({"DANUBE_API_KEY": KEY})
    assert s.api_url == DEFAULT_API_URL
    assert s.api_key is not None and s.api_key.get_secret_value() == KEY
    assert (s.timeout, s.max_retries, s.log_level, s.org_id) == (15.0, 2, "WARNING", None)
    assert KEY not in repr(s) and KEY not in str(s)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (None, "not set"),
        ("", "empty"),
        ("   ", "empty"),
        ("${DANUBE_API_KEY}", "placeholder"),
        ("{{KEY}}", "placeholder"),
    ],
)
def test_missing_key_is_not_fatal_but_explained(raw: str | None, problem: str) -> None:
    env = {} if raw is None else {"DANUBE_API_KEY": raw}
    s = load_settings(env)
    assert s.api_key is None
    assert s.api_key_problem is not None and problem in s.api_key_problem


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DANUBE_API_URL": "https://api.danubeai.com///"}, "https://api.danubeai.com"),
        ({"DANUBE_BASE_URL": "https://danube.internal.example"}, "https://danube.internal.example"),
        ({"DANUBE_API_URL": "http://127.0.0.1:8765/"}, "http://127.0.0.1:8765"),
        ({"DANUBE_API_URL": "http://127.5.0.1:1"}, "http://127.5.0.1:1"),
        ({"DANUBE_API_URL": "http://[::1]:8765"}, "http://[::1]:8765"),
        ({"DANUBE_API_URL": "http://localhost:8765"}, "http://localhost:8765"),
        (
            {"DANUBE_API_URL": "https://a.example", "DANUBE_BASE_URL": "https://b.example"},
            "https://a.example",
        ),
    ],
)
def test_api_url(env: dict[str, str], expected: str) -> None:
    assert load_settings(env).api_url == expected


@pytest.mark.parametrize(
    ("env", "var", "words"),
    [
        ({"DANUBE_API_URL": "http://api.danubeai.com"}, "DANUBE_API_URL", "https://"),
        ({"DANUBE_API_URL": "http://10.0.0.5:80"}, "DANUBE_API_URL", "https://"),
        ({"DANUBE_BASE_URL": "ftp://x"}, "DANUBE_BASE_URL", "http"),
        ({"DANUBE_API_URL": "https://user:pw@x.example"}, "DANUBE_API_URL", "credentials"),
        ({"DANUBE_API_URL": "https://x.example:99999"}, "DANUBE_API_URL", "valid"),
        ({"DANUBE_API_URL": "${DANUBE_API_URL}"}, "DANUBE_API_URL", "placeholder"),
        ({"DANUBE_TIMEOUT": "fast"}, "DANUBE_TIMEOUT", "number"),
        ({"DANUBE_TIMEOUT": "0"}, "DANUBE_TIMEOUT", "greater"),
        ({"DANUBE_TIMEOUT": "nan"}, "DANUBE_TIMEOUT", "greater"),
        ({"DANUBE_MAX_RETRIES": "-1"}, "DANUBE_MAX_RETRIES", "between"),
        ({"DANUBE_MAX_RETRIES": "2.5"}, "DANUBE_MAX_RETRIES", "whole"),
        ({"DANUBE_MCP_LOG_LEVEL": "LOUD"}, "DANUBE_MCP_LOG_LEVEL", "DEBUG"),
        ({"DANUBE_ORG_ID": "${ORG}"}, "DANUBE_ORG_ID", "placeholder"),
        ({"DANUBE_API_KEY": KEY + "\n" + KEY}, "DANUBE_API_KEY", "line break"),
        ({"DANUBE_TIMEOUT": "30", "DANUBE_MCP_CALL_BUDGET": "20"}, "DANUBE_MCP_CALL_BUDGET", "at least"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], var: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert message.startswith(var)
    assert words in message
    assert "\n" not in message
    assert KEY not in message


def test_org_timeout_retries_budget() -> None:
    s = load_settings(
        {
            "DANUBE_ORG_ID": " org_1 ",
            "DANUBE_TIMEOUT": "5",
            "DANUBE_MAX_RETRIES": "0",
            "DANUBE_MCP_LOG_LEVEL": "debug",
        }
    )
    assert (s.org_id, s.timeout, s.max_retries, s.log_level, s.call_budget) == (
        "org_1",
        5.0,
        0,
        "DEBUG",
        25.0,
    )
    assert load_settings({"DANUBE_TIMEOUT": "60"}).call_budget == 60.0


@pytest.mark.parametrize(
    ("var", "raw", "origin"),
    [
        ("DANUBE_API_URL", "https://api.danubeai.com/v1", "https://api.danubeai.com"),
        ("DANUBE_API_URL", "https://api.danubeai.com/v1/", "https://api.danubeai.com"),
        ("DANUBE_API_URL", "https://api.danubeai.com/v1/credentials/store", "https://api.danubeai.com"),
        (
            "DANUBE_BASE_URL",
            "https://danube.internal.example:8443/api/v1",
            "https://danube.internal.example:8443",
        ),
        ("DANUBE_API_URL", "http://127.0.0.1:8765/v1", "http://127.0.0.1:8765"),
        ("DANUBE_API_URL", f"https://api.danubeai.com/{KEY}", "https://api.danubeai.com"),
    ],
)
def test_a_path_in_the_base_url_is_refused_with_the_fix(var: str, raw: str, origin: str) -> None:
    """A pasted endpoint address would send every call to .../v1/v1/... (a 404 that blames the
    service id): refuse it at start and say exactly what to set instead."""
    with pytest.raises(ConfigError) as info:
        load_settings({var: raw})
    message = str(info.value)
    assert message.startswith(var)
    assert message.endswith(f"set {var}={origin}")
    assert "without a path" in message and "\n" not in message
    assert KEY not in message
