"""Settings from the environment, validated once at start-up.

Every problem is reported as a :class:`ConfigError` whose message is one line that names the
variable and says what is wrong, never its value (a misplaced key must not end up in a log).

A small hand-written loader rather than pydantic-settings: the rules here (aliases, placeholder
detection, loopback-only plain HTTP) need custom code either way, and pydantic's error text names
fields rather than the environment variables a user actually sets.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


class SecretStr:
    """A secret string whose ``str`` and ``repr`` are masked (pydantic's ``SecretStr`` interface,
    without importing pydantic at start-up, where every millisecond before the first answer counts)."""

    __slots__ = ("_secret",)

    def __init__(self, value: str) -> None:
        self._secret = value

    def get_secret_value(self) -> str:
        return self._secret

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)

    def __len__(self) -> int:
        return len(self._secret)


DEFAULT_API_URL = "https://api.danubeai.com"
DEFAULT_TIMEOUT = 15.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_CALL_BUDGET = 25.0
DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_SECURE_INPUT_TTL = 300.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting is invalid. The message is one line and never contains the value."""


def is_placeholder(value: str) -> bool:
    """True for values a host forgot to substitute, such as ``${DANUBE_API_KEY}`` or ``{{KEY}}``."""
    v = value.strip()
    return (v.startswith("${") and v.endswith("}")) or (v.startswith("{{") and v.endswith("}}"))


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (IPv6 with or without brackets)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_api_url(raw: str, var: str = "DANUBE_API_URL") -> str:
    """Validate a Danube base URL (scheme, host, optional port, no path) and return it without
    trailing slashes."""
    url = raw.strip()
    if not url:
        raise ConfigError(f"{var} is empty; leave it unset to use {DEFAULT_API_URL}")
    if is_placeholder(url):
        raise ConfigError(f"{var} is an unsubstituted placeholder; set a real URL or leave it unset")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{var} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{var} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{var} must not contain credentials, a query or a fragment")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ConfigError(
            f"{var} uses plain http:// for a non-loopback host; use https:// so the API key "
            "never crosses a network in clear text"
        )
    if parts.path.strip("/"):
        # Refused rather than trimmed: a path here is almost always a pasted endpoint address
        # (".../v1" or ".../v1/credentials/store"), and the server adds /v1/credentials/store
        # itself, so every call would go to ".../v1/v1/..." and fail as an unknown service.
        origin = f"{parts.scheme}://{parts.netloc}"
        raise ConfigError(
            f"{var} must be the API's base address without a path (the server adds "
            f"/v1/credentials/store itself): set {var}={origin}"
        )
    return url.rstrip("/")


def _float(env: Mapping[str, str], var: str, default: float, *, lo: float, hi: float) -> float:
    raw = env.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{var} must be a number of seconds") from None
    if not math.isfinite(value) or not lo < value <= hi:
        raise ConfigError(f"{var} must be greater than {lo:g} and at most {hi:g} seconds")
    return value


def _int(env: Mapping[str, str], var: str, default: int, *, lo: int, hi: int) -> int:
    raw = env.get(var)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{var} must be a whole number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{var} must be between {lo} and {hi}")
    return value


def parse_log_level(raw: str | None, var: str = "DANUBE_MCP_LOG_LEVEL") -> str:
    if raw is None or not raw.strip():
        return DEFAULT_LOG_LEVEL
    level = raw.strip().upper()
    if level == "WARN":
        level = "WARNING"
    if level not in LOG_LEVELS:
        raise ConfigError(f"{var} must be one of {', '.join(LOG_LEVELS)}")
    return level


@dataclass(frozen=True)
class Settings:
    """What the Danube client and the server need. Secrets are ``SecretStr``: their repr is masked."""

    api_url: str = DEFAULT_API_URL
    api_key: SecretStr | None = None
    # Why the key is missing, for the tool error ("not set", "empty", "placeholder").
    api_key_problem: str | None = "not set"
    # Where the key came from, for the self-test and error messages: "DANUBE_API_KEY" or the
    # file written by `danube-mcp login` (see keyfile.describe).
    api_key_source: str | None = None
    org_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    call_budget: float = DEFAULT_CALL_BUDGET
    log_level: str = DEFAULT_LOG_LEVEL
    secure_input: bool = False
    secure_input_ttl: float = DEFAULT_SECURE_INPUT_TTL
    public_url: str | None = None
    # stdio: answer the handshake from the cached snapshot while the SDK loads (transports/fast_start.py).
    fast_start: bool = True


def parse_bool(raw: str | None, var: str) -> bool:
    if raw is None or not raw.strip():
        return False
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{var} must be 1/true/yes/on or 0/false/no/off")


def _public_url(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    try:
        parts = urlsplit(raw.strip())
    except ValueError:
        raise ConfigError("DANUBE_MCP_PUBLIC_URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(
            "DANUBE_MCP_PUBLIC_URL must be an http:// or https:// URL without query or fragment"
        )
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError("DANUBE_MCP_PUBLIC_URL must use https:// for a non-loopback host")
    return raw.strip().rstrip("/")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the Danube settings. Raises :class:`ConfigError` with one clear line."""
    env = os.environ if env is None else env

    api_key: SecretStr | None = None
    problem: str | None = None
    raw_key = env.get("DANUBE_API_KEY")
    if raw_key is None:
        problem = "not set"
    elif not raw_key.strip():
        problem = "empty"
    elif is_placeholder(raw_key):
        problem = "an unsubstituted placeholder such as ${DANUBE_API_KEY}"
    elif any(c in raw_key.strip() for c in "\r\n\x00"):
        raise ConfigError("DANUBE_API_KEY contains a line break or NUL character; copy the key again")
    elif not (raw_key.strip().isascii() and raw_key.strip().isprintable()):
        raise ConfigError(
            "DANUBE_API_KEY contains characters an HTTP header cannot carry; copy the key again"
        )
    else:
        api_key = SecretStr(raw_key.strip())

    if env.get("DANUBE_API_URL") is not None:
        api_url = normalize_api_url(env["DANUBE_API_URL"], "DANUBE_API_URL")
    elif env.get("DANUBE_BASE_URL") is not None:
        api_url = normalize_api_url(env["DANUBE_BASE_URL"], "DANUBE_BASE_URL")
    else:
        api_url = DEFAULT_API_URL

    # No key in the environment: use the one `danube-mcp login` stored, with its URL and org.
    key_source = "DANUBE_API_KEY" if api_key is not None else None
    stored_org: str | None = None
    if raw_key is None or not raw_key.strip():
        from danube_mcp.keyfile import describe, stored_settings

        url_set = env.get("DANUBE_API_URL") is not None or env.get("DANUBE_BASE_URL") is not None
        stored, why = stored_settings(env, api_url if url_set else None)
        if stored is not None:
            api_key, problem, key_source = SecretStr(stored.api_key), None, describe(stored.path)
            api_url, stored_org = stored.api_url, stored.org_id
        elif why is not None:
            problem = f"{problem}, and {why}"

    org_id: str | None = stored_org
    raw_org = env.get("DANUBE_ORG_ID")
    if raw_org is not None and raw_org.strip():
        org_id = raw_org.strip()
        if is_placeholder(org_id):
            raise ConfigError("DANUBE_ORG_ID is an unsubstituted placeholder; set it or remove it")
        if len(org_id) > 256 or not org_id.isprintable():
            raise ConfigError("DANUBE_ORG_ID must be at most 256 printable characters")

    timeout = _float(env, "DANUBE_TIMEOUT", DEFAULT_TIMEOUT, lo=0.0, hi=300.0)
    max_retries = _int(env, "DANUBE_MAX_RETRIES", DEFAULT_MAX_RETRIES, lo=0, hi=10)
    budget = _float(env, "DANUBE_MCP_CALL_BUDGET", max(DEFAULT_CALL_BUDGET, timeout), lo=0.0, hi=600.0)
    if budget < timeout:
        raise ConfigError("DANUBE_MCP_CALL_BUDGET must be at least DANUBE_TIMEOUT")
    log_level = parse_log_level(env.get("DANUBE_MCP_LOG_LEVEL"))
    secure_input = parse_bool(env.get("DANUBE_MCP_SECURE_INPUT"), "DANUBE_MCP_SECURE_INPUT")
    secure_input_ttl = _float(env, "DANUBE_MCP_SECURE_INPUT_TTL", DEFAULT_SECURE_INPUT_TTL, lo=0.0, hi=3600.0)
    public_url = _public_url(env.get("DANUBE_MCP_PUBLIC_URL"))
    raw_fast = env.get("DANUBE_MCP_FAST_START")
    fast_start = (
        True if raw_fast is None or not raw_fast.strip() else parse_bool(raw_fast, "DANUBE_MCP_FAST_START")
    )

    return Settings(
        api_url=api_url,
        api_key=api_key,
        api_key_problem=problem,
        api_key_source=key_source,
        org_id=org_id,
        timeout=timeout,
        max_retries=max_retries,
        call_budget=budget,
        log_level=log_level,
        secure_input=secure_input,
        secure_input_ttl=secure_input_ttl,
        public_url=public_url,
        fast_start=fast_start,
    )
