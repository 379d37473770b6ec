"""The sandbox's Danube-compatible HTTP API (a Starlette app that needs no lifespan).

Errors always use Danube's envelope ``{"error": {"code", "message", "details"}}``, and no error message or
detail ever contains the submitted credential value or API key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from danube_mcp.sandbox.catalog import Service, build_catalog, lookup
from danube_mcp.sandbox.constants import (
    API_KEY_HEADER,
    CREDENTIAL_TYPES,
    DEMO_API_KEY,
    MAX_BODY_BYTES,
    MAX_CREDENTIAL_VALUE_CHARS,
    MAX_SERVICE_ID_CHARS,
)
from danube_mcp.sandbox.device import MAX_CLIENT_NAME_CHARS, DeviceError, DeviceFlow
from danube_mcp.sandbox.device_page import DEVICE_PAGE_CSP, render_device_page
from danube_mcp.sandbox.guard import HostOriginGuard
from danube_mcp.sandbox.store import CredentialStore, key_prefix
from danube_mcp.transports.http_options import Allowlist

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
_JSON_TYPES: dict[type, str] = {
    dict: "object",
    list: "array",
    bool: "boolean",
    int: "number",
    float: "number",
}


class ApiError(Exception):
    """Raised by handlers; rendered as Danube's error envelope."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


def error_response(
    status: int, code: str, message: str, details: Mapping[str, Any] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "details": dict(details or {})}}
    return JSONResponse(body, status_code=status)


async def _on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _on_device_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DeviceError)
    response = error_response(exc.status, exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers["retry-after"] = str(exc.retry_after)
    return response


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _on_server_error(request: Request, exc: Exception) -> Response:
    # Never str(exc): an exception's text is not guaranteed to be free of request data.
    return error_response(500, "internal_error", "the sandbox hit an unexpected error")


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), "string")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(field: str, reason: str, **details: Any) -> ApiError:
    return ApiError(422, "invalid_field", f"{field} {reason}", {"field": field, **details})


def _string_field(body: Mapping[str, Any], field: str) -> str:
    if field not in body:
        raise ApiError(422, "missing_field", f"{field} is required", {"field": field})
    value = body[field]
    if not isinstance(value, str):
        raise _invalid(field, "must be a string", expected="string", received=_json_type(value))
    if not _is_unicode(value):
        raise _invalid(field, "must be valid Unicode text")
    return value


def _dashboard_path(service_id: str | None) -> str:
    return f"/dashboard/tools/{service_id or ':serviceId'}"


class _SandboxApi:
    def __init__(
        self,
        store: CredentialStore,
        api_keys: Collection[str],
        services: Mapping[str, Service],
        max_body_bytes: int,
        device_flow: DeviceFlow,
    ) -> None:
        self.store = store
        self.services = services
        self.max_body_bytes = max_body_bytes
        self.device_flow = device_flow
        started = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        # Compare keyed hashes, not the keys: no per-character timing signal about an accepted key.
        # Each configured key is its own account; only metadata is kept about it, never the key.
        self._configured: dict[str, dict[str, Any]] = {}
        for key in api_keys:
            owner = store.owner_id(key)
            self._configured[owner] = {
                "id": f"cfg_{owner[:12]}",
                "name": "demo key" if key == DEMO_API_KEY else "configured key",
                "prefix": key_prefix(key),
                "created_at": started,
                "source": "configured",
            }
        self.stats: dict[str, int] = {"store_requests": 0, "stored": 0}

    async def authenticate(self, request: Request) -> str:
        """The account (owner id) the request's ``danube-api-key`` reaches; 401 otherwise."""
        api_key = request.headers.get(API_KEY_HEADER, "")
        if not api_key.strip():
            raise ApiError(401, "unauthorized", f"missing API key: send it in the {API_KEY_HEADER} header")
        owner = self.store.owner_id(api_key)
        if owner in self._configured:
            return owner
        account = await self.store.account_for_key(api_key)
        if account is not None:
            return account
        message = "invalid API key"
        if api_key.startswith("${") and api_key.endswith("}"):
            message += " (it looks like an unsubstituted ${...} placeholder)"
        raise ApiError(401, "unauthorized", message)

    async def _read_json_object(self, request: Request) -> dict[str, Any]:
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not (
            media_type.startswith("application/") and media_type.endswith("+json")
        ):
            raise ApiError(415, "unsupported_media_type", "the request body must be JSON (application/json)")
        too_large = ApiError(
            413, "payload_too_large", "the request body is too large", {"max_bytes": self.max_body_bytes}
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ApiError(400, "invalid_request", "invalid Content-Length header")
            if int(declared) > self.max_body_bytes:
                raise too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise too_large
        except ClientDisconnect:
            raise ApiError(
                400, "invalid_request", "the client disconnected before sending the body"
            ) from None
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_body", "the request body must be a JSON object", {})
        return data

    def _validate(self, body: Mapping[str, Any]) -> tuple[Service, str, str]:
        service_id = _string_field(body, "service_id").strip()
        if not service_id:
            raise _invalid("service_id", "must not be empty")
        if len(service_id) > MAX_SERVICE_ID_CHARS:
            raise _invalid(
                "service_id",
                f"must be at most {MAX_SERVICE_ID_CHARS} characters",
                max_length=MAX_SERVICE_ID_CHARS,
            )
        credential_type = _string_field(body, "credential_type")
        if credential_type not in CREDENTIAL_TYPES:
            allowed = sorted(CREDENTIAL_TYPES)
            if credential_type.strip().lower().startswith("oauth"):
                path = _dashboard_path(service_id)
                raise ApiError(
                    422,
                    "unsupported_credential_type",
                    f"OAuth credentials cannot be stored through this endpoint; connect the service in the"
                    f" dashboard at {path}",
                    {"field": "credential_type", "allowed": allowed, "dashboard_path": path},
                )
            raise ApiError(
                422,
                "unsupported_credential_type",
                f"credential_type must be one of: {', '.join(allowed)}",
                {"field": "credential_type", "allowed": allowed},
            )
        value = _string_field(body, "credential_value")
        if not value.strip():
            raise _invalid("credential_value", "must not be empty")
        if len(value) > MAX_CREDENTIAL_VALUE_CHARS:
            limit = MAX_CREDENTIAL_VALUE_CHARS
            raise _invalid("credential_value", f"must be at most {limit} characters", max_length=limit)
        service = lookup(self.services, service_id)
        if service is None:
            raise ApiError(
                404,
                "service_not_found",
                "no service has this service_id; GET /v1/services lists them",
                {"service_id": service_id},
            )
        if not service.requires_credentials:
            path = _dashboard_path(service.id)
            raise ApiError(
                400,
                "oauth_only_service",
                f"{service.name} is connected through OAuth, not a stored credential; connect it in the"
                f" dashboard at {path}",
                {"service_id": service.id, "dashboard_path": path},
            )
        return service, credential_type, value

    # -- endpoints --------------------------------------------------------------------------------

    async def store_credential(self, request: Request) -> Response:
        self.stats["store_requests"] += 1
        account = await self.authenticate(request)
        service, credential_type, value = self._validate(await self._read_json_object(request))
        # Shielded, so a write that committed is always counted even if the client goes away meanwhile.
        with anyio.CancelScope(shield=True):
            result = await self.store.put_for(account, service.id, credential_type, value)
            self.stats["stored"] += 1
        log.info(
            "stored a %s credential for %s as %s (owner %s…, version %d)",
            credential_type,
            service.id,
            result.stored_as,
            account[:8],
            result.version,
        )
        return JSONResponse(
            {
                "success": True,
                "service_id": service.id,
                "service_name": service.name,
                "credential_type": credential_type,
                "stored_as": result.stored_as,
            }
        )

    async def list_credentials(self, request: Request) -> Response:
        account = await self.authenticate(request)
        rows = await self.store.list_credentials_for(account)
        credentials = []
        tampered = [row.service_id for row in rows if not row.intact]
        for row in rows:
            if not row.intact:
                continue
            service = self.services.get(row.service_id)
            credentials.append(
                {
                    "service_id": row.service_id,
                    "service_name": service.name if service else None,
                    "credential_type": row.credential_type,
                    "stored_as": row.stored_as,
                    "updated_at": row.updated_at,
                    "fingerprint": row.fingerprint,
                    "version": row.version,
                }
            )
        # Rows that fail authentication (a column or the ciphertext changed outside the sandbox) are not
        # listed as credentials; their service ids are named so the problem is visible.
        return JSONResponse({"credentials": credentials, "tampered": tampered})

    # -- API keys and the device flow -------------------------------------------------------------

    async def list_api_keys(self, request: Request) -> Response:
        """Metadata of the keys that reach the caller's account: never a key, at most a 4-char prefix."""
        account = await self.authenticate(request)
        keys: list[dict[str, Any]] = []
        if account in self._configured:
            keys.append(dict(self._configured[account]))
        for info in await self.store.list_api_keys(account):
            keys.append(
                {
                    "id": info.id,
                    "name": info.name,
                    "prefix": info.prefix,
                    "created_at": info.created_at,
                    "source": "device",
                }
            )
        return JSONResponse({"api_keys": keys})

    async def device_code(self, request: Request) -> Response:
        body = await self._read_json_object(request)
        name = body.get("client_name", "unnamed client")
        if not isinstance(name, str):
            raise _invalid("client_name", "must be a string", expected="string", received=_json_type(name))
        name = name.strip()
        if not name or len(name) > MAX_CLIENT_NAME_CHARS or not name.isprintable():
            raise _invalid(
                "client_name",
                f"must be 1 to {MAX_CLIENT_NAME_CHARS} printable characters",
                max_length=MAX_CLIENT_NAME_CHARS,
            )
        code = self.device_flow.start(name)
        base = str(request.base_url).rstrip("/")
        log.info("device code issued for client %r", name)
        return JSONResponse(
            {
                "device_code": code.device_code,
                "user_code": code.user_code,
                "verification_url": f"{base}/device",
                "verification_url_complete": f"{base}/device?user_code={code.user_code}",
                "expires_in": code.expires_in,
                "interval": code.interval,
            }
        )

    async def device_token(self, request: Request) -> Response:
        device_code = _string_field(await self._read_json_object(request), "device_code")
        grant = self.device_flow.poll(device_code)
        assert grant.account is not None
        with anyio.CancelScope(shield=True):
            api_key, info = await self.store.issue_api_key(grant.account, grant.client_name)
        log.info(
            "device flow: issued key %s for client %r (account %s…)", info.id, info.name, info.account[:8]
        )
        return JSONResponse({"api_key": api_key, "key_id": info.id, "name": info.name})

    async def _decide(self, request: Request, approve: bool) -> Response:
        account = await self.authenticate(request)
        user_code = _string_field(await self._read_json_object(request), "user_code")
        if approve:
            client_name = self.device_flow.approve(user_code, account)
        else:
            client_name = self.device_flow.deny(user_code)
        verb = "approved" if approve else "denied"
        log.info("device code %s for client %r (account %s…)", verb, client_name, account[:8])
        return JSONResponse({verb: True, "client_name": client_name})

    async def device_approve(self, request: Request) -> Response:
        return await self._decide(request, approve=True)

    async def device_deny(self, request: Request) -> Response:
        return await self._decide(request, approve=False)

    async def device_page(self, request: Request) -> Response:
        return HTMLResponse(
            render_device_page(request.query_params.get("user_code", "")),
            headers={"content-security-policy": DEVICE_PAGE_CSP, "x-frame-options": "DENY"},
        )

    async def list_services(self, request: Request) -> Response:
        return JSONResponse({"services": [service.to_json() for service in self.services.values()]})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def get_stats(self, request: Request) -> Response:
        return JSONResponse(dict(self.stats))


def create_app(
    store: CredentialStore,
    *,
    api_keys: Collection[str],
    services: Mapping[str, Service] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    allowlist: Allowlist | None = None,
    device_flow: DeviceFlow | None = None,
) -> Starlette:
    """Build the sandbox API over an open store. Needs no lifespan (works under ``httpx2.ASGITransport``).

    ``services`` defaults to the built-in catalog. The caller owns ``store`` and closes it.
    ``app.state.stats`` counts ``store_requests`` (every POST to the store endpoint) and ``stored``.
    ``allowlist`` turns on the Host/Origin checks (``danube-sandbox`` always passes one; the in-process
    sandbox of ``danube-mcp --sandbox`` has no socket and needs none). ``device_flow`` holds the
    device-flow settings and pending codes (default: 600 s codes, 5 s poll interval).
    """
    keys = [key for key in api_keys if isinstance(key, str) and key.strip()]
    if not keys or len(keys) != len(api_keys):
        raise ValueError("api_keys must be a non-empty collection of non-empty strings")
    catalog = build_catalog() if services is None else dict(services)
    api = _SandboxApi(store, keys, catalog, max_body_bytes, device_flow or DeviceFlow())
    app = Starlette(
        routes=[
            Route("/health", api.health, methods=["GET"]),
            Route("/v1/services", api.list_services, methods=["GET"]),
            Route("/v1/credentials/store", api.store_credential, methods=["POST"]),
            Route("/v1/credentials", api.list_credentials, methods=["GET"]),
            Route("/v1/_stats", api.get_stats, methods=["GET"]),
            Route("/v1/api-keys", api.list_api_keys, methods=["GET"]),
            Route("/v1/auth/device/code", api.device_code, methods=["POST"]),
            Route("/v1/auth/device/token", api.device_token, methods=["POST"]),
            Route("/v1/_device/approve", api.device_approve, methods=["POST"]),
            Route("/v1/_device/deny", api.device_deny, methods=["POST"]),
            Route("/device", api.device_page, methods=["GET"]),
        ],
        middleware=[] if allowlist is None else [Middleware(HostOriginGuard, allowlist=allowlist)],
        exception_handlers={
            ApiError: _on_api_error,
            DeviceError: _on_device_error,
            HTTPException: _on_http_exception,
            Exception: _on_server_error,
        },
    )
    app.state.store = store
    app.state.services = api.services
    app.state.stats = api.stats
    app.state.device_flow = api.device_flow
    return app
