"""The Danube REST client: the only code that talks to Danube.

One :class:`DanubeClient` per process owns one ``httpx2.AsyncClient`` (a keep-alive pool shared by
every MCP session and transport). Each call is bounded by a total budget, retried only where a
retry is safe and useful, and every failure is raised as a :class:`DanubeError` subclass whose
text is written for the model and the person, with every secret scrubbed out of it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import select
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from email.utils import parsedate_to_datetime
from typing import Any, Final

import anyio
import httpcore2
import httpx2

from danube_mcp import __version__
from danube_mcp.danube.errors import (
    RETRY_STATUSES,
    AuthenticationFailed,
    ConfirmationRequired,
    ConnectionFailed,
    DanubeError,
    MalformedResponse,
    MissingApiKey,
    NotFound,
    PaymentRequired,
    PermissionDenied,
    RateLimited,
    RetryableServerError,
    ServerError,
    StoreRefused,
    UpstreamTimeout,
    ValidationFailed,
)
from danube_mcp.danube.models import StoreRequest, StoreResult
from danube_mcp.danube.redact import REDACTED, Scrubber, clean_message, key_tail
from danube_mcp.danube.tls import TrustRoots

# httpcore runs `import sniffio` on every request to detect the async library. When sniffio is not
# installed, each of those imports searches sys.path afresh (about 0.15 ms, several per call).
# Recording the absence once gives httpcore the same answer ("asyncio") without the search.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

__all__ = [
    "AuthenticationFailed",
    "ConfirmationRequired",
    "ConnectionFailed",
    "DanubeClient",
    "DanubeError",
    "MalformedResponse",
    "MissingApiKey",
    "NotFound",
    "PaymentRequired",
    "PermissionDenied",
    "RateLimited",
    "ServerError",
    "StoreRefused",
    "UpstreamTimeout",
    "ValidationFailed",
]

STORE_PATH: Final = "/v1/credentials/store"
MAX_RESPONSE_BYTES: Final = 256 * 1024
RETRY_AFTER_CAP: Final = 10.0
BACKOFF_BASE: Final = 0.5
BACKOFF_CAP: Final = 8.0
USER_AGENT: Final = f"danube-mcp/{__version__}"
INGESTION_DISABLED: Final = "central_credential_ingestion_disabled"
# Error codes of Danube's contract: the only upstream text kept after a secure-input store.
KNOWN_CODES: Final = frozenset({INGESTION_DISABLED, "payment_required", "confirmation_required"})
STORED_AS: Final = frozenset({"value", "reference"})
CREDENTIAL_TYPES: Final = frozenset({"bearer", "api_key"})
CONFIRM_MINUTES_DEFAULT: Final = 5


# --------------------------------------------------------------------------------------------
# Body parsing


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurdly deep nesting
        return None


def _wait_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    n = max(1, math.ceil(seconds))
    return f"wait {n} second{'s' if n != 1 else ''}"


def _error_fields(data: Any) -> tuple[str | None, str | None, dict[str, Any]]:
    """(message, code, details) from an error body, in the documented order of precedence."""
    if not isinstance(data, dict):
        return None, None, {}
    err = data.get("error")
    if isinstance(err, dict):
        details = err.get("details")
        msg = err.get("message")
        code = err.get("code")
        return (
            msg if isinstance(msg, str) and msg.strip() else None,
            code if isinstance(code, str) else None,
            details if isinstance(details, dict) else {},
        )
    detail = data.get("detail")
    if isinstance(detail, dict):
        # Some deployments nest the envelope under "detail" (FastAPI HTTPException(detail={...})).
        nested = detail.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else detail
        msg = inner.get("message") or inner.get("hint")
        code = inner.get("code") if isinstance(inner.get("code"), str) else None
        if isinstance(inner.get("error"), str):
            code = code or inner["error"]
        return (
            msg if isinstance(msg, str) and msg.strip() else None,
            code,
            {k: v for k, v in inner.items() if isinstance(k, str)},
        )
    if isinstance(detail, str) and detail.strip():
        return detail, None, {}
    if isinstance(detail, list) and detail:
        # FastAPI-style validation errors: use only location and message; the "input" entry
        # would echo the request body, secret included.
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
            elif isinstance(item, str):
                parts.append(item)
        if parts:
            return "; ".join(parts), None, {}
    msg = data.get("message")
    if isinstance(msg, str) and msg.strip():
        return msg, None, {}
    if isinstance(err, str) and err.strip():
        return err, None, {}
    return None, None, {}


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _find_strings(data: Any, name: str, depth: int = 3) -> list[str]:
    """Every string value under key ``name`` in nested objects, ``depth`` levels down at most."""
    out: list[str] = []
    if depth <= 0 or not isinstance(data, dict):
        return out
    for k, v in data.items():
        if k == name and isinstance(v, str) and v:
            out.append(v)
        elif isinstance(v, dict):
            out += _find_strings(v, name, depth - 1)
    return out


def _find_number(data: Any, name: str, depth: int = 3) -> float | None:
    if depth <= 0 or not isinstance(data, dict):
        return None
    v = data.get(name)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0:
        return float(v)
    for sub in data.values():
        if isinstance(sub, dict) and (found := _find_number(sub, name, depth - 1)) is not None:
            return found
    return None


def _free_text(text: str | None, secrets: Scrubber, limit: int | None = None) -> str | None:
    """Upstream free text as one clean line, or None: always None after a secure-input store."""
    if secrets.strict or not isinstance(text, str) or not text.strip():
        return None
    line = clean_message(text, secrets)
    return line[:limit] if limit else line


# --------------------------------------------------------------------------------------------
# The connection pool's network layer


def _socket_readable(sock: Any) -> bool:
    """Whether an idle keep-alive socket has something to read (in practice: the server closed it).
    A socket that is gone counts as readable, i.e. as closed."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# The ``timeout`` parameters below are httpcore2's interface (hence the ASYNC109 exemptions).
class _PoolStream(httpcore2.AsyncNetworkStream):
    """httpcore2's anyio stream, with its raw socket looked up once.

    On every request the pool asks each idle connection whether its socket became readable (the
    server closed it). Through anyio each such question rebuilds a table of a dozen attribute
    getters; with 32 calls in flight the pool holds ~32 connections and asks twice per request,
    which cost more CPU than the rest of the upstream exchange (see bench/README.md)."""

    __slots__ = ("_inner", "_sock")

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        # A socket.socket, or asyncio's TransportSocket wrapper of one: anything with fileno().
        sock = inner.get_extra_info("socket")
        self._sock = sock if callable(getattr(sock, "fileno", None)) else None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        return _PoolStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return _socket_readable(self._sock)
        return self._inner.get_extra_info(info)


class _PoolBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's anyio backend, handing out :class:`_PoolStream` streams."""

    def __init__(self) -> None:
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _PoolStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _PoolStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PoolTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport (request/response types, exception mapping) over an httpcore2 pool built
    here with :class:`_PoolBackend`. httpx2 offers no way to pass a network backend, and its own
    constructor would build (and load trust roots for) a pool only to throw it away, so it is not
    called: ``_pool`` is the one attribute the transport's methods use."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx2.Limits) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=_PoolBackend(),
        )


# --------------------------------------------------------------------------------------------
# The client


class DanubeClient:
    """Stores credentials in Danube. Create one per process; close it with :meth:`aclose`."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        org_id: str | None = None,
        timeout: float = 15.0,
        max_retries: int = 2,
        call_budget: float = 25.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        max_connections: int = 128,
        tls: TrustRoots | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.call_budget = call_budget
        headers = [(b"user-agent", USER_AGENT.encode()), (b"accept", b"application/json")]
        if org_id:
            headers.append((b"danube-org-id", org_id.encode()))
        self._base_headers = headers
        self._url = httpx2.URL(self.base_url + STORE_PATH)
        self._timeouts = httpx2.Timeout(timeout, connect=min(timeout, 10.0)).as_dict()
        self._limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,  # keep every connection a burst opened
            keepalive_expiry=30.0,
        )
        self._tls = tls
        # The connection pool is used directly, not through httpx2.AsyncClient: this client needs
        # none of its cookie jar, auth flow, redirect handling or event hooks (redirects must not
        # be followed anyway, so the key never travels elsewhere), and they cost CPU on every call.
        # Created on first use: building it loads TLS trust roots, which start-up need not wait for.
        self._transport: httpx2.AsyncBaseTransport | None = transport
        self.closed = False
        # Injectable for tests: the sleep between retries and the jitter source.
        self._sleep: Callable[[float], Awaitable[None]] = anyio.sleep
        self._random: Callable[[], float] = random.random

    @property
    def has_default_key(self) -> bool:
        return self._api_key is not None

    def __repr__(self) -> str:
        return f"DanubeClient(base_url={self.base_url!r}, api_key={'set' if self._api_key else 'unset'})"

    def _client(self) -> httpx2.AsyncBaseTransport:
        transport = self._transport
        if transport is None:
            if self.closed:
                raise ConnectionFailed("The Danube client has been closed (the server is shutting down).")
            if self.base_url.startswith("http://"):
                # Plain HTTP (loopback only, see config): no trust roots to load. A context with
                # none fails closed should TLS ever be attempted.
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            elif self._tls is not None:
                context = self._tls.context()
            else:
                context = httpx2.create_ssl_context(verify=True, trust_env=False)
            transport = self._transport = _PoolTransport(context, self._limits)
        return transport

    async def aclose(self) -> None:
        self.closed = True
        if self._transport is not None:
            await self._transport.aclose()

    async def __aenter__(self) -> DanubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ----------------------------------------------------------------------------------------

    def key_tail(self, api_key: str | None = None) -> str | None:
        """The last characters of the key a store would use, to show which account it goes to."""
        return key_tail(api_key if api_key is not None else self._api_key)

    async def store_credential(
        self, request: StoreRequest, *, api_key: str | None = None, strict_fields: bool = False
    ) -> StoreResult:
        """Store one credential. ``api_key`` overrides the client's own key (per-caller keys).

        ``strict_fields``: for values the model never saw (entered on a secure-input page): no
        upstream free text at all reaches the result or an error, only fixed fields (the request's
        service_id and credential_type, a service_name that passes the full check) and messages
        written here."""
        key = api_key if api_key is not None else self._api_key
        if not key:
            raise MissingApiKey("No Danube API key is configured.")
        secrets = Scrubber(
            (key, request.credential_value),
            known=(request.service_id, request.credential_type),
            strict_fields=strict_fields,
        )
        body = json.dumps(request.to_json(), ensure_ascii=False, separators=(",", ":")).encode()
        headers = [
            *self._base_headers,
            (b"danube-api-key", key.encode()),
            (b"content-type", b"application/json"),
        ]

        deadline = time.monotonic() + self.call_budget
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                return await self._attempt(
                    body, headers, request, secrets, min(self.timeout, remaining), attempt
                )
            except DanubeError as exc:
                exc.attempts = attempt
                if not exc.retryable or attempt > self.max_retries:
                    raise
                delay = self._backoff(attempt, exc)
                if delay is None or time.monotonic() + delay + 0.05 >= deadline:
                    raise
            await self._sleep(delay)

    def _backoff(self, attempt: int, exc: DanubeError) -> float | None:
        """Seconds to wait before the next attempt, or None to stop retrying."""
        if isinstance(exc, RateLimited) and exc.plan_cap:
            return None
        if exc.retry_after is not None:  # 429 or 503 with Retry-After (RFC 9110 section 10.2.3)
            return exc.retry_after if exc.retry_after <= RETRY_AFTER_CAP else None
        base = min(BACKOFF_BASE * 2.0 ** (attempt - 1), BACKOFF_CAP)
        return base * (0.5 + 0.5 * self._random())

    async def _attempt(
        self,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        store: StoreRequest,
        secrets: Scrubber,
        limit: float,
        attempt: int,
    ) -> StoreResult:
        if limit <= 0:
            raise UpstreamTimeout(self._timeout_message(), attempts=attempt)
        try:
            with anyio.fail_after(limit):
                request = httpx2.Request(
                    "POST", self._url, headers=headers, content=body, extensions={"timeout": self._timeouts}
                )
                response = await self._client().handle_async_request(request)
                try:
                    raw, too_big = await self._read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout(self._timeout_message()) from None
        except httpx2.TimeoutException:
            raise UpstreamTimeout(self._timeout_message()) from None
        except httpx2.ConnectError:
            raise ConnectionFailed(self._connection_message("the connection was refused or failed")) from None
        except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError, httpx2.NetworkError):
            raise ConnectionFailed(
                self._connection_message("the connection closed before a complete answer arrived")
            ) from None
        except httpx2.HTTPError:
            raise ConnectionFailed(self._connection_message("the HTTP exchange failed")) from None
        return self._interpret(response, raw, too_big, store, secrets)

    @staticmethod
    async def _read_capped(response: httpx2.Response) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        size = 0
        # No content coding (this client asks for none): the transport's byte stream as it is,
        # without the decoder and chunker layers of aiter_bytes, which only cost time per call.
        coded = response.headers.get("content-encoding", "identity").strip().lower() != "identity"
        stream = response.aiter_bytes() if coded else response.stream
        async for chunk in stream:  # type: ignore[union-attr]
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                return b"", True
            chunks.append(chunk)
        return b"".join(chunks), False

    # ----------------------------------------------------------------------------------------

    def _interpret(
        self, response: httpx2.Response, raw: bytes, too_big: bool, store: StoreRequest, secrets: Scrubber
    ) -> StoreResult:
        status = response.status_code
        if 200 <= status < 300:
            if too_big:
                raise MalformedResponse(
                    f"Danube's answer (HTTP {status}) was larger than {MAX_RESPONSE_BYTES // 1024} KiB "
                    "and was not read. " + _UNKNOWN_OUTCOME,
                    status=status,
                )
            return self._success(status, _parse_json(raw), store, secrets)
        data = None if too_big else _parse_json(raw)
        raw_message, raw_code, details = _error_fields(data)
        confirm_tokens = _find_strings(data, "confirm_token") if status == 409 else []
        if confirm_tokens:
            # A credential for the pending action: scrubbed from anything shown, never kept.
            secrets = secrets.extended(*confirm_tokens)
        clean = _free_text(raw_message, secrets)
        reason = _free_text(response.reason_phrase, secrets, 80) or ""
        said = f": {clean}" if clean else f" ({reason or 'no reason given'})" if not secrets.strict else ""
        if raw_code in KNOWN_CODES:
            code: str | None = raw_code
        else:
            code = _free_text(raw_code, secrets, 80)
            code = None if code == REDACTED else code
        kw: dict[str, Any] = {"status": status, "code": code, "upstream_message": clean}

        if status in (400, 422):
            if INGESTION_DISABLED in (details.get("error"), raw_code):
                hint = _free_text(details.get("hint"), secrets)
                hint_text = f" {hint}" if hint else ""
                raise ValidationFailed(
                    "This Danube deployment does not accept plaintext credentials "
                    f"(HTTP {status}).{hint_text}"
                    " Store a 'vault://<mount>/<path>#<field>' or 'env://<NAME>' reference instead, "
                    "or connect the service in the Danube dashboard.",
                    **kw,
                )
            raise ValidationFailed(
                f"Danube rejected the request (HTTP {status}){said}. Check service_id, credential_type "
                "and credential_value; do not retry unchanged.",
                **kw,
            )
        if status == 401:
            raise AuthenticationFailed(
                f"Danube rejected the API key (HTTP 401){said}. The key is missing, wrong or revoked: "
                "fix DANUBE_API_KEY in the MCP host's configuration (or the danube-api-key header you "
                "send) and restart the server. Do not retry until the key is fixed.",
                **kw,
            )
        if status == 402:
            raise PaymentRequired(
                f"Danube refused the store: payment required (HTTP 402){said}. The Danube account "
                "cannot pay for this action. Nothing was stored; do not retry. Ask the user to check "
                "billing in the Danube dashboard, then try again once it is sorted out.",
                **kw,
            )
        if status == 403:
            raise PermissionDenied(
                f"Danube refused this action for the API key (HTTP 403){said}. The key is not allowed "
                "to store credentials for this service; do not retry. Ask the user to check the key's "
                "permissions in the Danube dashboard.",
                **kw,
            )
        if status == 404:
            raise NotFound(
                f"Danube does not know this service_id (HTTP 404){said}. Look up the correct service "
                "id in the Danube dashboard or service catalog and try again with it.",
                **kw,
            )
        if status == 409 and (confirm_tokens or raw_code == "confirmation_required"):
            expires_in = _find_number(data, "expires_in")
            minutes = math.ceil(expires_in / 60) if expires_in else CONFIRM_MINUTES_DEFAULT
            # No upstream text here at all: it is about the pending action and may quote its token
            # in forms that cannot be recognised when the body does not name the token itself.
            kw["upstream_message"] = None
            raise ConfirmationRequired(
                "Danube requires confirmation for this action (HTTP 409, confirmation required): the "
                "API key was created to need the user's explicit approval. Nothing was stored yet. "
                f"Tell the user to confirm the pending credential store in Danube within about {minutes} "
                f"minute{'s' if minutes != 1 else ''}. Do not retry on your own: call the tool again "
                "only after the user says they have confirmed.",
                expires_in=expires_in,
                **kw,
            )
        if status == 429:
            upgrade = None
            if isinstance(data, dict):
                upgrade = data.get("upgrade_url") or (
                    data["error"].get("upgrade_url") if isinstance(data.get("error"), dict) else None
                )
                upgrade = upgrade or details.get("upgrade_url")
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            if upgrade:
                url = _free_text(str(upgrade), secrets)
                where = f"at {url}" if url and url != REDACTED else "in the Danube dashboard"
                raise RateLimited(
                    f"Danube's plan limit has been reached (HTTP 429){said}. Do not retry; the user "
                    f"can upgrade the plan {where}.",
                    plan_cap=True,
                    retry_after=retry_after,
                    **kw,
                )
            wait = _wait_text(retry_after) or "wait a minute"
            raise RateLimited(
                f"Danube is rate limiting requests (HTTP 429){said}. {wait.capitalize()} and try again.",
                retry_after=retry_after,
                **kw,
            )
        if status >= 500:
            error_cls = RetryableServerError if status in RETRY_STATUSES else ServerError
            retry_after = _parse_retry_after(response.headers.get("retry-after"))
            server_wait = _wait_text(retry_after)
            when = f"{server_wait.capitalize()} and try again" if server_wait else "Try again in a minute"
            raise error_cls(
                f"Danube had a server problem (HTTP {status}){said}. {when}; if it persists, Danube "
                "may be down or the operation switched off.",
                retry_after=retry_after,
                **kw,
            )
        if 300 <= status < 400:
            raise MalformedResponse(
                f"Danube answered with a redirect (HTTP {status}); redirects are not followed so the "
                "API key cannot leak. Check DANUBE_API_URL.",
                **kw,
            )
        raise DanubeError(f"Danube rejected the request (HTTP {status}){said}.", **kw)

    def _success(self, status: int, data: Any, store: StoreRequest, secrets: Scrubber) -> StoreResult:
        if not isinstance(data, dict):
            raise MalformedResponse(
                f"Danube's answer (HTTP {status}) was not a JSON object. " + _UNKNOWN_OUTCOME, status=status
            )
        if data.get("success") is not True:
            message, raw_code, _ = _error_fields(data)
            reason = _free_text(message, secrets)
            code = raw_code if raw_code in KNOWN_CODES else _free_text(raw_code, secrets, 80)
            if data.get("success") is False:
                said = f": {reason}" if reason else ""
                raise StoreRefused(
                    f"Danube refused to store the credential{said}. Nothing was stored; fix the "
                    "problem it names before trying again.",
                    status=status,
                    code=None if code == REDACTED else code,
                    upstream_message=reason,
                )
            raise MalformedResponse(
                f"Danube's answer (HTTP {status}) had no valid 'success' field. " + _UNKNOWN_OUTCOME,
                status=status,
            )
        for name in ("service_id", "service_name", "credential_type"):
            if not isinstance(data.get(name), str):
                raise MalformedResponse(
                    f"Danube's answer (HTTP {status}) lacked a valid '{name}' field. " + _UNKNOWN_OUTCOME,
                    status=status,
                )
        fields = secrets.for_fields()
        service_id: str = data["service_id"]
        credential_type: str = data["credential_type"]
        if secrets.strict or service_id not in secrets.known:
            # After a secure-input store only what the request said; otherwise a changed id is
            # kept if it is clean (Danube may answer with its canonical id).
            service_id = store.service_id if secrets.strict else clean_message(service_id, fields)
        if secrets.strict or (
            credential_type not in secrets.known and credential_type not in CREDENTIAL_TYPES
        ):
            credential_type = (
                store.credential_type if secrets.strict else clean_message(credential_type, fields)
            )
        # The name is the one upstream text kept even in strict mode, and only if it is clean.
        service_name = clean_message(data["service_name"], fields)
        stored_as = data.get("stored_as")
        notice = data.get("notice")
        deprecated = data.get("deprecated")
        return StoreResult(
            service_id=service_id,
            service_name=service_name,
            credential_type=credential_type,
            stored_as=stored_as if isinstance(stored_as, str) and stored_as in STORED_AS else None,
            notice=self._notice(notice, deprecated is True, secrets),
            deprecated=deprecated if isinstance(deprecated, bool) else None,
        )

    @staticmethod
    def _notice(notice: Any, deprecated: bool, secrets: Scrubber) -> str | None:
        """Danube's notice (the plaintext deprecation, say), if it can be passed on safely."""
        if secrets.strict or not isinstance(notice, str) or not notice.strip():
            return None  # the result's ``deprecated`` flag still says it, in our words
        text = clean_message(notice, secrets)
        if text != REDACTED:
            return text
        return _DEPRECATION_NOTICE if deprecated else None

    def _timeout_message(self) -> str:
        return (
            f"Danube did not answer in time (limit {self.timeout:g} s per attempt, {self.call_budget:g} s "
            "in all). Try again later; a store replaces any earlier one, so retrying is safe."
        )

    def _connection_message(self, why: str) -> str:
        return (
            f"Could not reach Danube at {self.base_url}: {why}. Check the network and DANUBE_API_URL; "
            "retrying later is safe."
        )


_DEPRECATION_NOTICE = (
    "Danube deprecates storing plaintext credentials (its own notice was withheld because it quoted "
    "part of a secret). Prefer a 'vault://<mount>/<path>#<field>' or 'env://<NAME>' reference."
)

_UNKNOWN_OUTCOME = (
    "The credential may or may not have been stored; retrying is safe because a store replaces "
    "the previous credential."
)
