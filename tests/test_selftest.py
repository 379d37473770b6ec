"""``danube-mcp --self-test`` from the outside: a real ``python -m danube_mcp`` process against a
small fake Danube on 127.0.0.1 (http.server, in this file), a closed port, an HTML page and a TLS
endpoint with its own certificate authority. Every report line is OK / FAILED / NOT CHECKED, the
exit code follows them, nothing is ever stored, and the key never appears in the output."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from procs import REPO, child_env

GOOD_KEY = "dk-CANARY-selftest-good-0123456789abcdef"
WRONG_KEY = "dk-CANARY-selftest-wrong-fedcba9876543210"


@dataclass
class Seen:
    method: str
    path: str
    key: str | None


@dataclass
class FakeDanube:
    """Answers ``GET /v1/api-keys`` like Danube: 200 for GOOD_KEY, 401 JSON envelope otherwise.
    ``html=True`` makes it a web page instead (a wrong DANUBE_API_URL)."""

    html: bool = False
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


def _handler(fake: FakeDanube) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            key = self.headers.get("danube-api-key")
            fake.seen.append(Seen(self.command, self.path, key))
            if fake.html:
                status, ctype = 200, "text/html"
                body = b"<!doctype html><html><body>Welcome to our website</body></html>"
            elif self.path == "/v1/api-keys" and self.command == "GET":
                ok = key == GOOD_KEY
                status, ctype = (200 if ok else 401), "application/json"
                payload = (
                    {"data": [{"id": "key_1", "name": "test"}]}
                    if ok
                    else {"error": {"code": "unauthorized", "message": "invalid API key", "details": {}}}
                )
                body = json.dumps(payload).encode()
            else:
                status, ctype = 404, "application/json"
                body = json.dumps({"error": {"code": "not_found", "message": "no such route"}}).encode()
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def start(fake: FakeDanube, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> FakeDanube:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        scheme = "https" if tls else "http"
        fake.url = f"{scheme}://{host}:{server.server_address[1]}"
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def self_test(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "danube_mcp", "--self-test", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
    )


def lines(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The report as {label: text}."""
    result: dict[str, str] = {}
    for line in out.stdout.splitlines():
        label, sep, text = line.partition(":")
        if sep and not line.startswith(" "):
            result[label] = text.strip()
    return result


def assert_no_canary(out: subprocess.CompletedProcess[str]) -> None:
    for key in (GOOD_KEY, WRONG_KEY):
        assert key not in out.stdout + out.stderr
        assert key[:-4] not in out.stdout + out.stderr  # not even all but the tail


def assert_every_check_line_is_honest(report: dict[str, str]) -> None:
    for label in ("address", "name resolution", "TCP connect", "TLS", "Danube answers", "API key"):
        assert report[label].startswith(("OK", "FAILED (", "NOT CHECKED (")), (label, report[label])


def test_good_key_every_check_passes(serve: object) -> None:
    fake = serve(FakeDanube(), host="localhost")  # type: ignore[operator]
    out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL=fake.url)
    report = lines(out)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_every_check_line_is_honest(report)
    assert report["name resolution"].startswith("OK (localhost -> ")
    assert report["TCP connect"].startswith("OK (")
    assert report["TLS"].startswith("NOT CHECKED (plain http://")
    assert report["Danube answers"].startswith("OK (GET /v1/api-keys without a key: 401")
    assert report["API key"] == f"OK (****{GOOD_KEY[-4:]} accepted by a read-only GET /v1/api-keys)"
    assert report["server over stdio"].startswith("OK (")
    assert report["result"] == "OK"
    assert "nothing was stored" in out.stdout
    # Read-only: one probe without the key, one with it, nothing else, never a store.
    assert [(s.method, s.path, s.key) for s in fake.seen] == [
        ("GET", "/v1/api-keys", None),
        ("GET", "/v1/api-keys", GOOD_KEY),
    ]
    assert_no_canary(out)


def test_wrong_key_fails_and_never_shows_it(serve: object) -> None:
    fake = serve(FakeDanube())  # type: ignore[operator]
    out = self_test(DANUBE_API_KEY=WRONG_KEY, DANUBE_API_URL=fake.url, DANUBE_ORG_ID="org_7")
    report = lines(out)
    assert out.returncode == 1, out.stdout + out.stderr
    assert_every_check_line_is_honest(report)
    assert report["name resolution"].startswith("NOT CHECKED (127.0.0.1 is an IP address")
    assert report["Danube answers"].startswith("OK (")
    assert report["API key"].startswith(f"FAILED (****{WRONG_KEY[-4:]} refused (401)")
    assert report["result"].startswith("FAILED (1 failed")
    assert "OK" not in report["result"]
    assert all(s.method == "GET" for s in fake.seen)
    assert_no_canary(out)


def test_closed_port(serve: object) -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL=f"http://127.0.0.1:{port}")
    report = lines(out)
    assert out.returncode == 1, out.stdout + out.stderr
    assert_every_check_line_is_honest(report)
    assert report["TCP connect"].startswith(f"FAILED (127.0.0.1:{port}: connection refused")
    for label in ("Danube answers", "API key"):
        assert report[label] == "NOT CHECKED (no connection)"
    assert report["result"].startswith("FAILED")
    assert_no_canary(out)


def test_a_web_page_is_not_danube_and_never_gets_the_key(serve: object) -> None:
    fake = serve(FakeDanube(html=True))  # type: ignore[operator]
    out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL=fake.url)
    report = lines(out)
    assert out.returncode == 1
    assert report["Danube answers"].startswith("FAILED (GET /v1/api-keys without a key got an HTML page")
    assert report["API key"].startswith("NOT CHECKED (")
    assert "key was not sent" in report["API key"]
    assert fake.seen and all(s.key is None for s in fake.seen)
    assert_no_canary(out)


@pytest.mark.parametrize(("value", "problem"), [("${DANUBE_API_KEY}", "placeholder"), ("", "empty")])
def test_missing_key_is_a_failed_check(serve: object, value: str, problem: str) -> None:
    fake = serve(FakeDanube())  # type: ignore[operator]
    out = self_test(DANUBE_API_KEY=value, DANUBE_API_URL=fake.url)
    report = lines(out)
    assert out.returncode == 1
    assert report["API key"].startswith("FAILED (DANUBE_API_KEY is ") and problem in report["API key"]
    assert report["Danube answers"].startswith("OK (")  # the rest is still checked
    assert all(s.key is None for s in fake.seen)


def test_a_path_in_the_url_is_a_failed_check() -> None:
    out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL="http://127.0.0.1:9/v1")
    report = lines(out)
    assert out.returncode == 1
    assert report["settings"].startswith("FAILED (DANUBE_API_URL must be the API's base address")
    assert "DANUBE_API_URL=http://127.0.0.1:9" in report["settings"]
    assert report["result"] == "FAILED"
    assert_no_canary(out)


# --------------------------------------------------------------------------------------------
# TLS, with a certificate authority made for the test


def _make_ca_and_server_cert(tmp: Path) -> tuple[Path, Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "danube-mcp test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_file, cert_file, key_file


@pytest.fixture
def tls_fake(serve: object, tmp_path: Path) -> tuple[FakeDanube, Path]:
    ca_file, cert_file, key_file = _make_ca_and_server_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    fake = serve(FakeDanube(), tls=context)  # type: ignore[operator]
    return fake, ca_file


def test_tls_handshake_checked_with_the_servers_trust_roots(tls_fake: tuple[FakeDanube, Path]) -> None:
    """http:// is loopback-only, so a TLS Danube on 127.0.0.1 must be https://; SSL_CERT_FILE (which
    the server itself honours) makes the test CA trusted."""
    fake, ca_file = tls_fake
    out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL=fake.url, SSL_CERT_FILE=str(ca_file))
    report = lines(out)
    assert out.returncode == 0, out.stdout + out.stderr
    assert report["TLS"].startswith("OK (TLSv1.") and "certificate valid for 127.0.0.1" in report["TLS"]
    assert report["API key"].startswith("OK (")
    assert_no_canary(out)


def test_untrusted_certificate_fails_tls_and_sends_no_key(tls_fake: tuple[FakeDanube, Path]) -> None:
    fake, _ = tls_fake
    out = self_test(DANUBE_API_KEY=GOOD_KEY, DANUBE_API_URL=fake.url)
    report = lines(out)
    assert out.returncode == 1
    assert report["TLS"].startswith("FAILED (certificate not accepted for 127.0.0.1")
    assert report["Danube answers"] == "NOT CHECKED (TLS failed)"
    assert report["API key"] == "NOT CHECKED (TLS failed)"
    assert fake.seen == []
    assert_no_canary(out)


def test_sandbox_self_test_keeps_storing_a_demo_credential(tmp_path: Path) -> None:
    out = self_test("--sandbox", "--sandbox-db", str(tmp_path / "s.db"))
    assert out.returncode == 0, out.stdout + out.stderr
    report = lines(out)
    assert report["mode"].startswith("SANDBOX")
    assert report["tool"] == "store_credential found"
    assert "success=True" in report["structured result"] and "sandbox=True" in report["structured result"]
    assert report["result"] == "OK"
