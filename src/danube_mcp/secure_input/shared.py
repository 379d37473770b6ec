"""Shared state for several server processes: where it lives and the keys every replica shares.

With ``DANUBE_MCP_STATE_URL=redis://...`` (or ``rediss://``) the pending secure-input entries and
single-use marks live in Redis, so a call, its page and its retry may each land on a different
process. Every process must then also agree on three secrets, all derived (HKDF-SHA256, one label
each) from one shared secret, ``DANUBE_MCP_STATE_KEY_FILE`` (or ``DANUBE_MCP_STATE_KEY``):

* the key that encrypts what Redis holds (the typed value, the entry's details, its outcome);
* the key that seals ``requestState``, so a retry is accepted by any replica;
* the salt of the caller identity hash, so a retry on another replica is the same caller.

Without a state URL nothing here is used: one process, memory, process-random keys.
Nothing in this module imports ``redis`` at import time (stdio start-up never pays for it).
"""

from __future__ import annotations

import importlib.util
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from danube_mcp.config import ConfigError, is_placeholder

if TYPE_CHECKING:
    from danube_mcp.secure_input.state import StateSealer
    from danube_mcp.secure_input.store import PendingStore

URL_ENV: Final = "DANUBE_MCP_STATE_URL"
KEY_FILE_ENV: Final = "DANUBE_MCP_STATE_KEY_FILE"
KEY_ENV: Final = "DANUBE_MCP_STATE_KEY"
MIN_SECRET_CHARS: Final = 32
MAX_KEY_FILE_BYTES: Final = 4096
SCHEMES: Final = ("redis", "rediss", "unix")
# GETDEL and SET ... PXAT, used by the store's scripts, arrived in Redis 6.2.
MIN_REDIS: Final = (6, 2)
_HKDF_SALT: Final = b"danube-mcp/shared-state/v1"


def derive_keys(secret: bytes) -> tuple[bytes, bytes, bytes]:
    """(value key, requestState key, identity salt): independent 32-byte keys from one secret."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def one(label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=label).derive(secret)

    return one(b"store-encryption"), one(b"request-state-sealing"), one(b"caller-identity-salt")


@dataclass(frozen=True, eq=False)
class SharedState:
    """Where the shared store is and the keys derived for it. Its repr shows neither."""

    url: str = field(repr=False)
    where: str  # host:port (or socket path) for messages: never a password
    value_key: bytes = field(repr=False)
    state_key: bytes = field(repr=False)
    identity_salt: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, url: str, secret: bytes) -> SharedState:
        value_key, state_key, identity_salt = derive_keys(secret)
        return cls(
            url=url,
            where=describe(url),
            value_key=value_key,
            state_key=state_key,
            identity_salt=identity_salt,
        )

    def broker_parts(self) -> dict[str, Any]:
        """The ``store`` and ``sealer`` for :class:`~danube_mcp.secure_input.SecureInputBroker`."""
        return {"store": self.store(), "sealer": self.sealer()}

    def store(self) -> PendingStore:
        from danube_mcp.secure_input.redis_store import RedisStore

        return RedisStore(self.url, value_key=self.value_key, where=self.where)

    def sealer(self) -> StateSealer:
        from danube_mcp.secure_input.state import StateSealer

        return StateSealer(self.state_key)

    def check_reachable(self, timeout: float = 3.0) -> None:
        """Connect once (synchronously, at start-up) and check the server's version.

        Raises :class:`ConfigError` with one line naming the address and the cause."""
        import redis
        from redis.exceptions import RedisError

        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=timeout, socket_timeout=timeout, client_name="danube-mcp"
        )
        try:
            client.ping()
            info = client.info("server")
        except RedisError as exc:
            raise ConfigError(
                f"cannot reach the shared state store ({URL_ENV}) at {self.where}: "
                f"{safe_reason(exc, self.url)}"
            ) from None
        finally:
            client.close()
        version = str(info.get("redis_version", "0")) if isinstance(info, dict) else "0"
        parts = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:2])
        if parts < MIN_REDIS:
            raise ConfigError(
                f"the shared state store at {self.where} runs Redis {version}; danube-mcp needs "
                f"{MIN_REDIS[0]}.{MIN_REDIS[1]} or newer"
            )


def describe(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without user or password."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or "a unix socket"
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def safe_reason(exc: BaseException, url: str) -> str:
    """A Redis error's text, one line, capped, with any password from the URL removed."""
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return text


def _validate_url(raw: str, source: str) -> str:
    url = raw.strip()
    if not url:
        raise ConfigError(f"{source} is empty; leave it unset for the embedded (one-process) store")
    if is_placeholder(url):
        raise ConfigError(f"{source} is an unsubstituted placeholder")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"{source} must start with redis://, rediss:// (TLS) or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{source} names no host (expected redis://HOST:PORT/DB)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(f"{source} has an invalid port") from None
    return url


def read_key_file(path: str, source: str) -> bytes:
    """The shared secret from a file of ours that nobody else can read or write (never a link)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{source} {path} is a symbolic link; name the real file")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError(f"{source} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{source} {path} cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{source} {path} is not a regular file")
        if os.name == "posix":
            if st.st_uid != os.geteuid():
                raise ConfigError(
                    f"{source} {path} belongs to another user (uid {st.st_uid}, you are uid "
                    f"{os.geteuid()}); use a file of your own"
                )
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{source} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"run: chmod 600 {path}"
                )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source} {path} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{source} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data.strip()


def _check_secret(secret: bytes, source: str) -> bytes:
    if not secret:
        raise ConfigError(f"{source} is empty")
    if is_placeholder(secret.decode("utf-8", "replace")):
        raise ConfigError(f"{source} is an unsubstituted placeholder")
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{source} must hold at least {MIN_SECRET_CHARS} characters of random text "
            "(for example: openssl rand -base64 48)"
        )
    return secret


def resolve_shared_state(
    url_flag: str | None = None, key_file_flag: str | None = None, env: Mapping[str, str] | None = None
) -> SharedState | None:
    """The shared-state configuration from flags and environment, or None (embedded store).

    Refuses (ConfigError, one line) a Redis URL without a key, a key without a URL, both a key
    file and a key, a weak key, a key file others can read, and a URL when ``redis`` is missing."""
    env = os.environ if env is None else env
    url_source = "--state-url" if url_flag is not None else URL_ENV
    raw_url = url_flag if url_flag is not None else env.get(URL_ENV)
    key_file = key_file_flag if key_file_flag is not None else (env.get(KEY_FILE_ENV) or None)
    key_file_source = "--state-key-file" if key_file_flag is not None else KEY_FILE_ENV
    raw_key = env.get(KEY_ENV)
    has_key = bool(key_file) or bool(raw_key and raw_key.strip())
    if raw_url is None or (url_flag is None and not raw_url.strip()):
        if has_key:
            raise ConfigError(
                f"{key_file_source if key_file else KEY_ENV} is set but {URL_ENV} (--state-url) is "
                "not: the shared key is only used with a shared state store"
            )
        return None
    url = _validate_url(raw_url, url_source)
    if key_file and raw_key and raw_key.strip():
        raise ConfigError(f"set either {key_file_source} or {KEY_ENV}, not both")
    if key_file:
        secret = _check_secret(read_key_file(key_file, key_file_source), key_file_source)
    elif raw_key and raw_key.strip():
        secret = _check_secret(raw_key.strip().encode(), KEY_ENV)
    else:
        raise ConfigError(
            f"refusing to use {url_source} without a shared key: set {KEY_FILE_ENV} "
            "(--state-key-file) to a file holding the same random secret on every replica"
        )
    if importlib.util.find_spec("redis") is None:
        raise ConfigError(f"{url_source} needs the redis package: pip install 'danube-mcp[redis]'")
    from danube_mcp.logs import SECRETS

    password = urlsplit(url).password
    if password:
        SECRETS.add(password)
    SECRETS.add(secret.decode("utf-8", "replace"))
    return SharedState.from_secret(url, secret)
