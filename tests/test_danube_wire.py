"""The Danube client's own HTTP/1.1 keep-alive client (``danube_mcp.danube.wire``), through
``DanubeClient`` against a real upstream on 127.0.0.1 (tests/upstream.py), and against a raw
socket server for answers no HTTP framework would send."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from danube_mcp.danube.client import (
    ConnectionFailed,
    DanubeClient,
    MalformedResponse,
    RateLimited,
    StoreRequest,
    UpstreamTimeout,
)
from danube_mcp.danube.wire import WireError, WirePool
from upstream import FakeUpstream, Reply

pytestmark = pytest.mark.anyio

KEY = "dk-CANARY-wire-key-000000000000000000"
SECRET = "sk-CANARY-wire-value-111111111111111111"
REQ = StoreRequest(service_id="svc_wire_001", credential_type="bearer", credential_value=SECRET)


def client_for(url: str, **kw: object) -> DanubeClient:
    return DanubeClient(base_url=url, api_key=KEY, max_retries=0, **kw)  # type: ignore[arg-type]


async def test_calls_share_one_connection_and_send_the_contract(upstream: FakeUpstream) -> None:
    async with client_for(upstream.url) as client:
        for _ in range(5):
            result = await client.store_credential(REQ)
            assert result.service_name == "Service svc_wire_001"
    assert upstream.connections == 1
    rec = upstream.requests[0]
    assert (rec.method, rec.path) == ("POST", "/v1/credentials/store")
    assert rec.headers["danube-api-key"] == KEY
    assert rec.headers["content-type"] == "application/json"
    assert rec.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert rec.json() == {
        "service_id": "svc_wire_001",
        "credential_type": "bearer",
        "credential_value": SECRET,
    }


async def test_concurrent_calls_are_bounded_and_connections_reused(upstream: FakeUpstream) -> None:
    upstream.set_default(lambda req: Reply(delay=0.05))
    async with client_for(upstream.url, max_connections=3) as client:
        for _ in range(2):
            async with anyio.create_task_group() as tg:
                for _ in range(9):
                    tg.start_soon(client.store_credential, REQ)
    assert len(upstream.requests) == 18
    assert upstream.max_in_flight <= 3
    assert upstream.connections == 3


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (Reply(close_before=True), ConnectionFailed, "closed before a complete answer"),
        (Reply(close_mid_body=True), ConnectionFailed, "closed before a complete answer"),
        (Reply(reset_before=True), ConnectionFailed, "closed before a complete answer"),
        (Reply(hang=True), UpstreamTimeout, "did not answer in time"),
        (Reply(drip=0.2), UpstreamTimeout, "did not answer in time"),
        (Reply(body=b"x" * (300 * 1024)), MalformedResponse, "larger than 256 KiB"),
        (Reply(status=429, headers={"retry-after": "7"}), RateLimited, "Wait 7 seconds"),
    ],
    ids=["close-before", "close-mid-body", "reset", "hang", "drip", "too-big", "retry-after"],
)
async def test_faults_map_to_clear_errors(
    upstream: FakeUpstream, reply: Reply, error: type[Exception], words: str
) -> None:
    upstream.script(reply)
    async with client_for(upstream.url, timeout=0.5, call_budget=1.0) as client:
        with pytest.raises(error) as caught:
            await client.store_credential(REQ)
        assert words in str(caught.value)
        assert SECRET not in str(caught.value) and KEY not in str(caught.value)
        # The pool recovers: the next call works on a fresh connection.
        assert (await client.store_credential(REQ)).service_id == "svc_wire_001"
    if isinstance(caught.value, RateLimited):
        assert caught.value.retry_after == 7


async def test_refused_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(ConnectionFailed, match="refused or failed"):
            await client.store_credential(REQ)


def success(service_id: str = "svc_wire_001") -> bytes:
    return json.dumps(
        {"success": True, "service_id": service_id, "service_name": "Svc", "credential_type": "bearer"}
    ).encode()


async def test_chunked_gzip_and_close_delimited_answers(upstream: FakeUpstream) -> None:
    body = success()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n"
    upstream.script(
        Reply(body=chunked, no_length=True, headers={"transfer-encoding": "chunked"}),
        Reply(body=gzip.compress(body), headers={"content-encoding": "gzip"}),
        Reply(body=body, no_length=True),
    )
    async with client_for(upstream.url) as client:
        names = [(await client.store_credential(REQ)).service_name for _ in range(4)]
    assert names == ["Svc", "Svc", "Svc", "Service svc_wire_001"]
    # Chunked and close-delimited answers here end with the connection closed (no_length): 3 in all.
    assert upstream.connections == 3


CONNECTIONS: list[int] = []


@asynccontextmanager
async def raw_server(answer: Callable[[int], bytes], close_after: bool = False) -> AsyncIterator[int]:
    """A server that reads one request head+body per turn and writes ``answer(turn)`` raw;
    ``CONNECTIONS`` gets one entry per accepted connection."""
    turn = 0
    CONNECTIONS.clear()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal turn
        CONNECTIONS.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                turn += 1
                data = answer(turn)
                writer.write(data)
                await writer.drain()
                if not data or close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def pool(port: int, **kw: object) -> WirePool:
    args: dict[str, object] = {
        "scheme": "http", "host": "127.0.0.1", "port": port, "ssl_context": None,
        "max_connections": 4, "keepalive_expiry": 30.0, "connect_timeout": 5.0,
    } | kw  # fmt: skip
    return WirePool(**args)  # type: ignore[arg-type]


HEAD = b"POST /v1/credentials/store HTTP/1.1\r\n"


async def test_interim_answers_are_skipped_and_http10_is_not_kept() -> None:
    body = success()
    answers = {
        1: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
        % (len(body), body),
        2: b"HTTP/1.0 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
    }
    async with raw_server(lambda t: answers.get(t, b"")) as port:
        p = pool(port)
        first = await p.request(HEAD, b"{}", 1024)
        assert (first.status, first.body) == (200, body)
        second = await p.request(HEAD, b"{}", 1024)
        assert second.status == 200
        assert p._idle == []  # an HTTP/1.0 answer without keep-alive is not reused
        await p.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort",
    ],
    ids=["no-status-line", "two-lengths", "unknown-coding", "bad-chunk", "short-body"],
)
async def test_malformed_answers_fail_cleanly(raw: bytes) -> None:
    async with raw_server(lambda t: raw, close_after=True) as port:
        p = pool(port)
        with pytest.raises(WireError) as caught:
            with anyio.fail_after(5):
                await p.request(HEAD, b"{}", 1024)
        assert caught.value.stage == "exchange"
        assert p._open == 0  # the connection was dropped, not pooled
        await p.aclose()


async def test_expired_idle_connections_are_replaced() -> None:
    body = success()
    ok = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    async with raw_server(lambda t: ok) as port:
        p = pool(port)
        for _ in range(3):
            await p.request(HEAD, b"{}", 1024)
        assert len(CONNECTIONS) == 1
        await p.aclose()
    async with raw_server(lambda t: ok) as port:
        p = pool(port, keepalive_expiry=0.0)
        for _ in range(3):
            await p.request(HEAD, b"{}", 1024)
        assert len(CONNECTIONS) == 3 and p._open == 0
        await p.aclose()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class _Roots:
    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    def context(self) -> ssl.SSLContext:
        return self._context


async def test_tls_verified_and_reused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    body = success()
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = next(
                    int(v.split(b":")[1])
                    for v in head.split(b"\r\n")
                    if v.lower().startswith(b"content-length")
                )
                await reader.readexactly(n)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = DanubeClient(
            base_url=f"https://localhost:{port}", api_key=KEY, max_retries=0, tls=_Roots(trusting)
        )  # type: ignore[arg-type]
        async with client:
            for _ in range(3):
                assert (await client.store_credential(REQ)).service_name == "Svc"
        assert len(seen) == 1
        # A certificate the client does not trust: refused at connect, never sent the key.
        untrusting = ssl.create_default_context()
        client = DanubeClient(
            base_url=f"https://localhost:{port}", api_key=KEY, max_retries=0, tls=_Roots(untrusting)
        )  # type: ignore[arg-type]
        async with client:
            with pytest.raises(ConnectionFailed, match="refused or failed"):
                await client.store_credential(REQ)
    finally:
        server.close()
