"""Secure input: the user types the credential on a one-time page, never in the chat.

MCP 2025-11-25 added URL-mode elicitation: the server asks the client to open a URL, the user
enters the secret there, and it reaches the server directly. The model only ever sees the link.

:class:`SecureInputBroker` owns the one-time entries and serves their pages as a small ASGI app:

* over HTTP the pages live in the main application under ``/secure-input/<token>``;
* over stdio the broker starts a listener on 127.0.0.1 with a random port on first use.

Each link carries an unguessable single-use token, expires after ``ttl`` seconds, takes one valid
submission, only over POST, rejects foreign Origins, and answers with ``no-store`` and
anti-framing headers. Pages never reflect the value.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup

from danube_mcp.secure_input.state import StateSealer
from danube_mcp.secure_input.store import (
    Entry,
    Flow,
    MemoryStore,
    PendingStore,
    StoreUnavailable,
    submitted_expiry,
)
from danube_mcp.tool.schema import ArgumentError, credential_label, parse_arguments
from danube_mcp.transports.asgi import Receive, Scope, Send, header, read_body

logger = logging.getLogger("danube_mcp.secure_input")


PATH_PREFIX: Final = "/secure-input/"
DEFAULT_TTL: Final = 300.0
MAX_FORM_BYTES: Final = 64 * 1024
# How long a page POST in the 2026 flow waits for the client's retry to report the outcome.
MRTR_PAGE_WAIT: Final = 15.0

SECURITY_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    # not "no-referrer": with it, browsers send "Origin: null" on the form POST, which is refused.
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
)


class _QuietServer:
    """uvicorn without its signal handling: the stdio server owns SIGINT/SIGTERM."""

    @staticmethod
    def create(app: Any, sock: socket.socket) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        config = uvicorn.Config(
            app, interface="asgi3", log_config=None, access_log=False, lifespan="off", server_header=False
        )
        return Server(config)


class SecureInputBroker:
    """The pages, the sealer for ``requestState``, and (for stdio) the local listener. Entries
    live in a :class:`~danube_mcp.secure_input.store.PendingStore`."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        public_url: str | None = None,
        store: PendingStore | None = None,
        sealer: StateSealer | None = None,
    ) -> None:
        self.ttl = ttl
        self.public_url = public_url.rstrip("/") if public_url else None
        self.store: PendingStore = store if store is not None else MemoryStore()
        self.sealer = sealer if sealer is not None else StateSealer()
        self._task_group: TaskGroup | None = None
        self._listener_url: str | None = None
        self._listener: Any = None
        self._lock = anyio.Lock()

    # -- lifecycle (stdio) ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[SecureInputBroker]:
        """Let the broker start a local listener on first use; stop it on exit."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            try:
                yield self
            finally:
                if self._listener is not None:
                    self._listener.should_exit = True
                    self._listener.force_exit = True
                tg.cancel_scope.cancel()
                self._task_group = None

    async def _local_base_url(self) -> str:
        async with self._lock:
            if self._listener_url is None:
                if self._task_group is None:
                    raise RuntimeError("secure input listener needs SecureInputBroker.running()")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                sock.setblocking(False)
                port = sock.getsockname()[1]
                allowed = {f"127.0.0.1:{port}", f"localhost:{port}"}

                async def local_app(scope: Scope, receive: Receive, send: Send) -> None:
                    # DNS-rebinding protection, as the HTTP app gives its own pages.
                    if scope["type"] == "http" and (header(scope, b"host") or "").lower() not in allowed:
                        await _page(send, 421, "Misdirected request", "Open the link exactly as given.")
                        return
                    await self.app(scope, receive, send)

                self._listener = _QuietServer.create(local_app, sock)
                self._task_group.start_soon(self._listener.serve, [sock])
                self._listener_url = f"http://127.0.0.1:{port}"
                logger.info("secure input pages served on 127.0.0.1:%d", port)
            return self._listener_url

    # -- entries -------------------------------------------------------------------------------

    async def open_entry(
        self, service_id: str, credential_type: str, *, caller: str, flow: Flow, account: str = ""
    ) -> tuple[Entry, str]:
        """A new pending entry and the token of its page link."""
        entry = Entry(
            entry_id=secrets.token_hex(16),
            service_id=service_id,
            credential_type=credential_type,
            caller=caller,
            flow=flow,
            expires_at=time.time() + self.ttl,
            account=account,
        )
        token = secrets.token_urlsafe(32)
        await self.store.put(entry, token)
        return entry, token

    async def url_for(self, token: str, request: Any = None) -> str:
        if self.public_url:
            base = self.public_url
        elif request is not None:
            base = f"{request.url.scheme}://{request.headers.get('host', '127.0.0.1')}"
        else:
            base = await self._local_base_url()
        return f"{base}{PATH_PREFIX}{token}"

    # -- the pages (ASGI) ----------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(PATH_PREFIX):
            await _page(send, 404, "Not found", "There is nothing here.")
            return
        method = scope["method"]
        if method not in ("GET", "POST"):
            await _page(send, 405, "Method not allowed", "Use the form on this page.", allow=b"GET, POST")
            return
        token = path[len(PATH_PREFIX) :]
        try:
            entry = await self.store.by_token(token) if _TOKEN.fullmatch(token) else None
        except StoreUnavailable:
            await _page(
                send,
                503,
                "Try again",
                "The server cannot reach its shared state just now. "
                "Reload this page in a moment; the link stays valid until it expires.",
            )
            return
        if entry is None or not entry.is_open():
            await _page(
                send,
                410,
                "Link no longer valid",
                "This link has expired or has already been used. Nothing was entered here. Ask the "
                "assistant to start again if you still want to store the credential.",
            )
            return
        if method == "GET":
            await _page(send, 200, "Enter credential", form=_form(entry))
            return
        await self._submit(entry, scope, receive, send)

    async def _submit(self, entry: Entry, scope: Scope, receive: Receive, send: Send) -> None:
        origin = header(scope, b"origin")
        own = {f"{scope.get('scheme', 'http')}://{header(scope, b'host') or ''}".lower()}
        if self.public_url:  # behind a TLS-terminating proxy the browser's origin is the public one
            parts = urlsplit(self.public_url)
            own.add(f"{parts.scheme}://{parts.netloc}".lower())
        if origin is not None and origin.rstrip("/").lower() not in own:
            await _page(send, 403, "Forbidden", "This form can only be submitted from its own page.")
            return
        ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            await _page(send, 415, "Unsupported form", "Submit the form on this page.")
            return
        body = await read_body(scope, receive, MAX_FORM_BYTES)
        if body is None:
            await _page(send, 413, "Too large", "The value is too long.")
            return
        fields = strict_form(body)
        if fields is None:
            await _page(
                send,
                400,
                "Please check the value",
                form=_form(entry, error="The form arrived garbled (bad encoding). Type the value again."),
            )
            return
        values = fields.get("credential_value", [])
        try:
            request = parse_arguments(
                {
                    "service_id": entry.service_id,
                    "credential_type": entry.credential_type,
                    "credential_value": values[0] if len(values) == 1 else None,
                }
            )
        except ArgumentError as exc:
            problem = str(exc).replace("credential_value: ", "")
            await _page(send, 400, "Please check the value", form=_form(entry, error=problem))
            return
        try:
            accepted = await self.store.submit(entry.entry_id, request.credential_value)
        except StoreUnavailable:
            await _page(
                send,
                503,
                "Not received",
                "The server cannot reach its shared state just now. "
                "Nothing was stored. Reload this page in a moment and enter the value again.",
            )
            return
        if not accepted:  # lost a race with expiry or another submission
            await _page(send, 410, "Link no longer valid", "This link has expired or was already used.")
            return
        if entry.flow == "link":
            accepted_until = submitted_expiry(entry, time.time())
            await _page(
                send,
                200,
                "Received",
                "danube-mcp has the value. Go back to your assistant within "
                f"{_minutes_left(accepted_until)} and tell it you have entered the credential: it "
                "finishes storing it when it calls store_credential again. You can close this tab.",
            )
            return
        finished = None
        with contextlib.suppress(StoreUnavailable):
            # 2025: the call is already waiting for the value and stores at once. 2026: the client
            # retries within moments; if it does not, the page need not hang for it.
            wait = max(entry.remaining(), 60.0) if entry.flow == "elicit" else MRTR_PAGE_WAIT
            finished = await self.store.wait_finished(entry.entry_id, wait)
        if finished is None:
            await _page(
                send,
                200,
                "Received",
                "danube-mcp has the value; your assistant is finishing the store. You can close this tab.",
            )
            return
        title = "Stored" if finished.ok else "Not stored"
        outcome = finished.outcome or "The request ended without an answer."
        await _page(send, 200 if finished.ok else 502, title, outcome + " You can close this tab.")


_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _minutes_left(until: float) -> str:
    minutes = max(1, int((until - time.time()) // 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def strict_form(body: bytes) -> dict[str, list[str]] | None:
    """``application/x-www-form-urlencoded`` decoded strictly: None for bad percent-encoding or
    bytes that are not UTF-8 (``parse_qs`` would turn those into U+FFFD and store a wrong value)."""
    fields: dict[str, list[str]] = {}
    if not body:
        return fields
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key = _unquote(name)
            fields.setdefault(key, []).append(_unquote(value))
        except ValueError:
            return None
    return fields


def _unquote(raw: bytes) -> str:
    raw = raw.replace(b"+", b" ")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # "%"
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in _HEX for c in pair):
                raise ValueError("bad percent-encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8")  # UnicodeDecodeError is a ValueError


_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _form(entry: Entry, error: str | None = None) -> str:
    kind = credential_label(entry.credential_type)
    problem = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        f"<p>Enter the <strong>{html.escape(kind)}</strong> for the Danube service "
        f"<code>{html.escape(entry.service_id)}</code>"
        + (f", to be stored in {html.escape(entry.account)}" if entry.account else "")
        + ". It goes straight to danube-mcp and on to Danube; the assistant never sees it.</p>"
        '<p class="small"><strong>Only continue if you asked your own assistant to store this '
        "credential just now.</strong> Never enter a credential on a link someone else sent you.</p>"
        f"{problem}"
        '<form method="post" autocomplete="off">'
        '<label for="credential_value">Credential</label>'
        '<input id="credential_value" name="credential_value" type="password" required '
        'maxlength="16384" autocomplete="off" autofocus spellcheck="false">'
        '<button type="submit">Store credential</button>'
        "</form>"
        f'<p class="small">This link works once and expires in {int(entry.remaining() // 60) or 1} '
        "minute(s).</p>"
    )


_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b}"
    "h1{font-size:1.4rem}label{display:block;font-weight:600;margin:1rem 0 .3rem}"
    "input{width:100%;padding:.6rem;font-size:1rem;box-sizing:border-box}"
    "button{margin-top:1rem;padding:.6rem 1.2rem;font-size:1rem}"
    ".error{color:#a40000}.small{color:#555;font-size:.85rem}"
)


async def _page(
    send: Send,
    status: int,
    title: str,
    text: str = "",
    *,
    form: str | None = None,
    allow: bytes | None = None,
) -> None:
    """An HTML page: ``text`` is escaped here; ``form`` is markup built by :func:`_form`."""
    body_html = form if form is not None else f"<p>{html.escape(text)}</p>"
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>danube-mcp: {html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}"
        "</body></html>"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(page)).encode()),
        *SECURITY_HEADERS,
    ]
    if allow:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": page})
