"""Options of the HTTP transports, from flags and ``DANUBE_MCP_*`` variables, and the rules that
keep a server safe to expose: the Host/Origin allow-list and the refusal of unsafe public binds.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from danube_mcp.config import ConfigError, Settings, is_loopback_host, is_placeholder, parse_bool

if TYPE_CHECKING:
    from danube_mcp.secure_input.shared import SharedState

MIN_TOKEN_LENGTH: Final = 16
DEFAULT_PORT: Final = 8000
LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
# Twice the session cap: every session's stream plus a request in flight for each. Lowered at
# start-up, quietly, to what the open-files limit leaves room for (see transports/limits.py).
DEFAULT_MAX_CONNECTIONS: Final = 2000
MAX_CONNECTIONS_RANGE: Final = (1, 1_000_000)
# Seconds a client has to send a whole request (headers and a body of at most 64 KiB).
DEFAULT_READ_TIMEOUT: Final = 10.0
READ_TIMEOUT_RANGE: Final = (0.1, 3600.0)


def _split_env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_bool(name: str) -> bool:
    return parse_bool(os.environ.get(name), name)


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError(f"{name} must be a whole number between {low} and {high}")
    return int(raw)


def _pick_int(flag: int | None, name: str, low: int, high: int) -> int | None:
    """A flag's value (already checked by the parser) or the environment's, or None if neither."""
    if flag is not None:
        return flag
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ConfigError(f"{name} must be a whole number between {low} and {high}")
    return int(raw)


def _pick_seconds(flag: float | None, name: str, default: float, low: float, high: float) -> float:
    if flag is not None:
        return flag
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw) if raw.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # also refuses nan and inf
        raise ConfigError(f"{name} must be a number of seconds between {low:g} and {high:g}")
    return value


def _read_token(path: str | None) -> str | None:
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--auth-token-file cannot be read ({exc.strerror})") from None
        source = "--auth-token-file"
    else:
        raw = os.environ.get("DANUBE_MCP_AUTH_TOKEN")
        if raw is None or not raw.strip():
            return None
        token = raw.strip()
        source = "DANUBE_MCP_AUTH_TOKEN"
    if not token:
        raise ConfigError(f"{source} is empty")
    if is_placeholder(token):
        raise ConfigError(f"{source} is an unsubstituted placeholder")
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or " " in token:
        raise ConfigError(f"{source} must be at least {MIN_TOKEN_LENGTH} printable characters without spaces")
    return token


@dataclass(frozen=True)
class HttpOptions:
    transport: str = "streamable-http"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    stateless: bool = False
    json_response: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    auth_token: str | None = field(default=None, repr=False)
    require_client_key: bool = False
    secure_input: bool = False
    secure_input_ttl: float = 300.0
    public_url: str | None = None
    # Stateful sessions (initialize era): caps in total and per caller identity, idle timeout.
    max_sessions: int = 1000
    max_sessions_per_caller: int = 100
    session_idle_seconds: float = 600.0
    # Bound to a non-loopback address (or an address not known, under an external ASGI server).
    public_bind: bool = False
    # Connection limits of the server danube-mcp runs (transports/limits.py). None: the default,
    # lowered quietly to what the open-files limit allows.
    max_connections: int | None = None
    read_timeout: float = DEFAULT_READ_TIMEOUT
    # Several processes: pending secure input in Redis, keys shared (None: this process only).
    shared_state: SharedState | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        args: argparse.Namespace | None,
        transport: str,
        settings: Settings,
        *,
        bind_known: bool = True,
        sandbox: bool = False,
    ) -> HttpOptions:
        """Flags first, then ``DANUBE_MCP_*`` environment variables. Refuses unsafe exposures."""

        def pick(flag: Any, env: str) -> Any:
            return flag if flag is not None else os.environ.get(env)

        from danube_mcp.secure_input.shared import resolve_shared_state

        a = args or argparse.Namespace()
        host = (pick(getattr(a, "host", None), "DANUBE_MCP_HOST") or "127.0.0.1").strip()
        raw_port = pick(getattr(a, "port", None), "DANUBE_MCP_PORT")
        try:
            port = DEFAULT_PORT if raw_port in (None, "") else int(raw_port)
        except ValueError:
            raise ConfigError("DANUBE_MCP_PORT must be a port number") from None
        if not 0 <= port <= 65535:
            raise ConfigError("--port / DANUBE_MCP_PORT must be between 0 and 65535")
        stateless = getattr(a, "stateless", None)
        json_response = getattr(a, "json_response", None)
        require = getattr(a, "require_client_key", None)
        opts = cls(
            transport=transport,
            host=host,
            port=port,
            stateless=stateless if stateless is not None else env_bool("DANUBE_MCP_STATELESS"),
            json_response=json_response
            if json_response is not None
            else env_bool("DANUBE_MCP_JSON_RESPONSE"),
            allowed_hosts=tuple(
                getattr(a, "allowed_host", None) or _split_env_list("DANUBE_MCP_ALLOWED_HOSTS")
            ),
            allowed_origins=tuple(
                getattr(a, "allowed_origin", None) or _split_env_list("DANUBE_MCP_ALLOWED_ORIGINS")
            ),
            auth_token=_read_token(
                getattr(a, "auth_token_file", None) or os.environ.get("DANUBE_MCP_AUTH_TOKEN_FILE")
            ),
            require_client_key=require if require is not None else env_bool("DANUBE_MCP_REQUIRE_CLIENT_KEY"),
            secure_input=bool(
                getattr(a, "secure_input", None)
                if getattr(a, "secure_input", None) is not None
                else settings.secure_input
            ),
            secure_input_ttl=settings.secure_input_ttl,
            public_url=settings.public_url,
            max_sessions=_env_int("DANUBE_MCP_MAX_SESSIONS", 1000, 1, 100_000),
            max_sessions_per_caller=_env_int("DANUBE_MCP_MAX_SESSIONS_PER_CALLER", 100, 1, 100_000),
            session_idle_seconds=60.0 * _env_int("DANUBE_MCP_SESSION_IDLE_MINUTES", 10, 1, 24 * 60),
            public_bind=not (bind_known and is_loopback_host(host)),
            max_connections=_pick_int(
                getattr(a, "max_connections", None), "DANUBE_MCP_MAX_CONNECTIONS", *MAX_CONNECTIONS_RANGE
            ),
            read_timeout=_pick_seconds(
                getattr(a, "read_timeout", None),
                "DANUBE_MCP_READ_TIMEOUT",
                DEFAULT_READ_TIMEOUT,
                *READ_TIMEOUT_RANGE,
            ),
            shared_state=resolve_shared_state(
                getattr(a, "state_url", None), getattr(a, "state_key_file", None)
            ),
        )
        opts.check_exposure(server_key=settings.api_key is not None or sandbox, bind_known=bind_known)
        return opts

    def check_exposure(self, *, server_key: bool, bind_known: bool = True) -> None:
        """A public server must name its hosts, must not let strangers spend the server's key, and
        must give secure-input links a public https address.

        ``bind_known`` is False under an external ASGI server (``uvicorn --factory``): the address
        it binds is not visible from here, so it is treated as public.
        """
        public = not (bind_known and is_loopback_host(self.host))
        if not public:
            return
        where = f"bind {self.host}" if bind_known else "serve under an external ASGI server (address unknown)"
        if bind_known and not self.allowed_hosts:
            raise ConfigError(
                f"refusing to {where} without --allowed-host (DANUBE_MCP_ALLOWED_HOSTS): "
                "name the host names clients use, so DNS-rebinding protection can stay on"
            )
        if server_key and not (self.auth_token or self.require_client_key):
            raise ConfigError(
                f"refusing to {where} with a server-side Danube key (DANUBE_API_KEY or --sandbox) "
                "but no access token: set "
                "DANUBE_MCP_AUTH_TOKEN (or --auth-token-file) or --require-client-key, so strangers "
                "cannot spend the server's Danube key"
            )
        if self.secure_input and not self.public_url:
            raise ConfigError(
                f"refusing to {where} with secure input but no DANUBE_MCP_PUBLIC_URL: set it to the "
                "server's public https:// address, so entry links point there and go over TLS"
            )


# --------------------------------------------------------------------------------------------
# Host / Origin matching


def _port_ok(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes other scripts' digits and superscripts."""
    return 0 < len(text) <= 5 and text.isascii() and text.isdigit()


def _host_matches(value: str, pattern: str) -> bool:
    value, pattern = value.lower(), pattern.lower()
    if pattern.endswith(":*"):
        base = pattern[:-2]
        return value == base or (value.startswith(base + ":") and _port_ok(value[len(base) + 1 :]))
    if value == pattern:
        return True
    # A pattern without a port accepts that host on any port.
    has_port = pattern.rsplit(":", 1)[-1].isdigit() and not pattern.endswith("]")
    return not has_port and value.startswith(pattern + ":") and _port_ok(value[len(pattern) + 1 :])


def _origin_matches(value: str, pattern: str) -> bool:
    value, pattern = value.lower().rstrip("/"), pattern.lower().rstrip("/")
    if pattern.endswith(":*"):
        base = pattern[:-2]
        return value == base or (value.startswith(base + ":") and _port_ok(value[len(base) + 1 :]))
    return value == pattern


@dataclass(frozen=True)
class Allowlist:
    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    @classmethod
    def build(cls, extra_hosts: tuple[str, ...], extra_origins: tuple[str, ...]) -> Allowlist:
        hosts = tuple(f"{name}:*" for name in LOOPBACK_NAMES) + extra_hosts
        origins = tuple(f"{scheme}://{name}:*" for scheme in ("http", "https") for name in LOOPBACK_NAMES)
        return cls(hosts=hosts, origins=origins + extra_origins)

    def host_ok(self, host: str | None) -> bool:
        return bool(host) and any(_host_matches(host or "", p) for p in self.hosts)

    def origin_ok(self, origin: str | None) -> bool:
        return origin is None or any(_origin_matches(origin, p) for p in self.origins)
