"""DNS-rebinding protection for ``danube-sandbox``: the server's Host/Origin rules, as ASGI middleware.

A foreign ``Host`` gets 421 (a page on evil.example resolving to 127.0.0.1 cannot reach the sandbox);
a foreign ``Origin`` gets 403 (a browser page on another origin cannot post to it). Loopback names
are allowed by default; more come from ``--allowed-host`` / ``--allowed-origin``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from danube_mcp.transports.asgi import send_json
from danube_mcp.transports.http_options import Allowlist


def _header_values(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


def _text(raw: bytes) -> str | None:
    """Printable ASCII only (so ``127.0.0.1:８７６５`` with full-width digits never matches)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


class HostOriginGuard:
    def __init__(self, app: ASGIApp, allowlist: Allowlist) -> None:
        self.app = app
        self.allowlist = allowlist

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = _header_values(scope, b"host")
        host = _text(hosts[0]) if len(hosts) == 1 else None
        if host is None or not self.allowlist.host_ok(host):
            await _refuse(
                send,
                421,
                "misdirected_request",
                "this Host is not allowed (DNS-rebinding protection); add it with --allowed-host"
                " (DANUBE_SANDBOX_ALLOWED_HOSTS)",
            )
            return
        origins = _header_values(scope, b"origin")
        if origins:
            origin = _text(origins[0]) if len(origins) == 1 else None
            if origin is None or not self.allowlist.origin_ok(origin):
                await _refuse(
                    send,
                    403,
                    "forbidden_origin",
                    "this Origin is not allowed; add it with --allowed-origin"
                    " (DANUBE_SANDBOX_ALLOWED_ORIGINS)",
                )
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    payload = {"error": {"code": code, "message": message, "details": {}}}
    await send_json(send, status, payload, ((b"connection", b"close"),))
