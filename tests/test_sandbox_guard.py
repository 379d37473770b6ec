"""``danube-sandbox`` exposure rules from the outside (issue 12 item 9): Host/Origin checks against DNS
rebinding, refusal of public binds, and API keys that stay out of the process list."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx2
import pytest

from danube_mcp.sandbox import DEMO_API_KEY, KEY_ENV_VAR
from sandbox_proc import sandbox_command, sandbox_env, sandbox_stats, start_sandbox

pytestmark = pytest.mark.anyio

KEY_A = "sk-canary-guard-key-a-8c1d2e3f4a5b"
KEY_B = "sk-canary-guard-key-b-0f9e8d7c6b5a"
STORE_BODY = {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": "v-canary-1"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw_request(url: str, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def run(args: list[str], env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "danube_mcp.sandbox", *args]
    return subprocess.run(
        command, env=sandbox_env(env), capture_output=True, text=True, timeout=60, check=False
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("danube-sandbox: error: "), result.stderr
    return lines[0]


# -- Host and Origin -------------------------------------------------------------------------------


async def test_foreign_host_gets_421_and_stores_nothing(tmp_path: Path) -> None:
    """DNS rebinding: a page on evil.example that resolves to 127.0.0.1 posts with the demo key."""
    with start_sandbox(tmp_path, api_keys=()) as sandbox:
        port = port_of(sandbox.url)
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": DEMO_API_KEY}) as c:
            for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
                refused = await c.post("/v1/credentials/store", json=STORE_BODY, headers={"host": host})
                assert refused.status_code == 421, host
                assert refused.json()["error"]["code"] == "misdirected_request"
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
                assert (await c.get("/health", headers={"host": host})).status_code == 200, host
        assert await sandbox_stats(sandbox.url) == {"store_requests": 0, "stored": 0}
        # Non-ASCII digits in the port and a missing Host get 421; two Host headers are refused by the
        # HTTP parser already (400), and by the guard if a parser ever let them through.
        fullwidth = "127.0.0.1:８７６５".encode()
        for request, allowed in (
            (b"GET /health HTTP/1.1\r\nHost: " + fullwidth + b"\r\nConnection: close\r\n\r\n", {b"421"}),
            (b"GET /health HTTP/1.0\r\n\r\n", {b"421"}),
            (
                b"GET /health HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
                {b"400", b"421"},
            ),
        ):
            status_line = raw_request(sandbox.url, request).split(b"\r\n", 1)[0]
            assert status_line.split()[1] in allowed, (request, status_line)


async def test_foreign_origin_gets_403(tmp_path: Path) -> None:
    with start_sandbox(tmp_path, api_keys=()) as sandbox:
        port = port_of(sandbox.url)
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": DEMO_API_KEY}) as c:
            for origin in ("https://evil.example", "null", f"http://evil.example:{port}"):
                refused = await c.post("/v1/credentials/store", json=STORE_BODY, headers={"origin": origin})
                assert refused.status_code == 403, origin
                assert refused.json()["error"]["code"] == "forbidden_origin"
            ok = await c.get("/health", headers={"origin": f"http://localhost:{port}"})
            assert ok.status_code == 200
        assert (await sandbox_stats(sandbox.url))["store_requests"] == 0


async def test_extra_hosts_and_origins_by_flag_and_env(tmp_path: Path) -> None:
    args = ("--allowed-host", "sandbox.test:*")
    env: dict[str, str | None] = {"DANUBE_SANDBOX_ALLOWED_ORIGINS": "https://app.test, https://b.test"}
    with start_sandbox(tmp_path, api_keys=(), extra_args=args, env=env) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            assert (await c.get("/health", headers={"host": "sandbox.test:1234"})).status_code == 200
            assert (await c.get("/health", headers={"host": "other.test"})).status_code == 421
            assert (await c.get("/health", headers={"origin": "https://b.test"})).status_code == 200
            assert (await c.get("/health", headers={"origin": "https://c.test"})).status_code == 403
    env = {"DANUBE_SANDBOX_ALLOWED_HOSTS": "one.test,two.test:8080"}
    with start_sandbox(tmp_path, api_keys=(), env=env) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as c:
            assert (await c.get("/health", headers={"host": "two.test:8080"})).status_code == 200
            assert (await c.get("/health", headers={"host": "two.test:8081"})).status_code == 421


# -- public binds ----------------------------------------------------------------------------------


def test_public_bind_is_refused_without_the_explicit_flag(tmp_path: Path) -> None:
    db = tmp_path / "sb.db"
    line = one_error_line(run(["--host", "0.0.0.0", "--port", "0", "--db", str(db)]))
    assert "refusing to bind 0.0.0.0" in line and "--allow-public-bind" in line
    assert not db.exists()


def test_public_bind_is_refused_with_the_demo_key(tmp_path: Path) -> None:
    db = tmp_path / "sb.db"
    args = [
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--db",
        str(db),
        "--allow-public-bind",
        "--allowed-host",
        "x.test",
    ]
    assert "demo key" in one_error_line(run(args))
    env: dict[str, str | None] = {"DANUBE_SANDBOX_API_KEYS": f"{KEY_A},{DEMO_API_KEY}"}
    assert "demo key" in one_error_line(run(args, env))
    assert not db.exists()


def test_public_bind_needs_allowed_hosts_then_passes_the_checks(tmp_path: Path) -> None:
    db = tmp_path / "sb.db"
    env: dict[str, str | None] = {
        "DANUBE_SANDBOX_API_KEYS": KEY_A,
        "DANUBE_SANDBOX_ALLOW_PUBLIC_BIND": "1",
        "DANUBE_SANDBOX_HOST": "192.0.2.1",  # TEST-NET-1: passes the rules, then cannot be bound here
    }
    assert "--allowed-host" in one_error_line(run(["--port", "0", "--db", str(db)], env))
    line = one_error_line(run(["--port", "0", "--db", str(db), "--allowed-host", "192.0.2.1"], env))
    assert line == "danube-sandbox: error: cannot bind 192.0.2.1: no such address on this machine"
    assert KEY_A not in line


# -- API keys: environment, file, command line -----------------------------------------------------


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""


async def _accepts(url: str, key: str) -> int:
    async with httpx2.AsyncClient(base_url=url, headers={"danube-api-key": key}) as c:
        return (await c.get("/v1/credentials")).status_code


async def test_keys_from_environment_stay_out_of_the_process_list(tmp_path: Path) -> None:
    with start_sandbox(tmp_path, api_keys=(KEY_A, KEY_B)) as sandbox:
        assert KEY_A.encode() not in _cmdline(sandbox.proc.pid)
        assert [await _accepts(sandbox.url, key) for key in (KEY_A, KEY_B, DEMO_API_KEY)] == [200, 200, 401]
    stderr = sandbox.stderr_text()
    assert "warning" not in stderr and KEY_A not in stderr and KEY_B not in stderr


async def test_keys_from_a_private_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# sandbox keys\n{KEY_A}\n\n  {KEY_B}  \n")
    keys_file.chmod(0o600)
    with start_sandbox(tmp_path, api_keys=(), extra_args=("--api-keys-file", str(keys_file))) as sandbox:
        assert [await _accepts(sandbox.url, key) for key in (KEY_A, KEY_B, DEMO_API_KEY)] == [200, 200, 401]
    assert KEY_A not in sandbox.stderr_text() and "warning" not in sandbox.stderr_text()


@pytest.mark.parametrize("problem", ["mode", "symlink", "placeholder", "empty"])
def test_bad_keys_file_is_refused_without_echoing_keys(tmp_path: Path, problem: str) -> None:
    keys_file = tmp_path / "keys.txt"
    real = tmp_path / "real-keys.txt"
    content = {"placeholder": f"{KEY_A}\n${{DANUBE_API_KEY}}\n", "empty": "# nothing\n\n"}.get(problem, KEY_A)
    (real if problem == "symlink" else keys_file).write_text(content)
    if problem == "symlink":
        real.chmod(0o600)
        keys_file.symlink_to(real)
    else:
        keys_file.chmod(0o644 if problem == "mode" else 0o600)
    db = tmp_path / "sb.db"
    line = one_error_line(
        run(["--port", "0", "--db", str(db)], {"DANUBE_SANDBOX_API_KEYS_FILE": str(keys_file)})
    )
    expected = {
        "mode": "mode 0644",
        "symlink": "symbolic link",
        "placeholder": "unsubstituted placeholder",
        "empty": "holds no key",
    }[problem]
    assert expected in line and "DANUBE_SANDBOX_API_KEYS_FILE" in line
    assert KEY_A not in line and "DANUBE_API_KEY}" not in line
    assert not db.exists()


async def test_command_line_key_still_works_with_a_one_line_warning(tmp_path: Path) -> None:
    with start_sandbox(tmp_path, api_keys=(KEY_A,), keys_via="argv") as sandbox:
        assert await _accepts(sandbox.url, KEY_A) == 200
    warnings = [line for line in sandbox.stderr_text().splitlines() if "warning" in line.lower()]
    assert warnings == [
        "danube-sandbox: warning: --api-key is visible to other local users in the process list;"
        " prefer DANUBE_SANDBOX_API_KEYS or --api-keys-file"
    ]
    assert KEY_A not in sandbox.stderr_text()


def test_placeholder_in_environment_is_refused(tmp_path: Path) -> None:
    line = one_error_line(
        run(sandbox_command(tmp_path / "sb.db")[3:], {"DANUBE_SANDBOX_API_KEYS": "${DANUBE_API_KEY}"})
    )
    assert "DANUBE_SANDBOX_API_KEYS" in line and "placeholder" in line


def test_core_dumps_are_disabled(tmp_path: Path) -> None:
    if not Path("/proc/self/limits").exists():
        pytest.skip("needs /proc")
    with start_sandbox(tmp_path) as sandbox:
        limits = Path(f"/proc/{sandbox.proc.pid}/limits").read_text()
    [core] = [line for line in limits.splitlines() if line.startswith("Max core file size")]
    assert core.split()[4:6] == ["0", "0"], core


async def test_guard_refuses_two_host_or_origin_headers_in_process() -> None:
    """The branch the HTTP parser normally pre-empts: two Host (or Origin) headers are never accepted."""
    from danube_mcp.sandbox import create_app, open_store
    from danube_mcp.transports.http_options import Allowlist

    async with open_store(":memory:") as store:
        app = create_app(store, api_keys=[DEMO_API_KEY], allowlist=Allowlist.build((), ()))

        async def status(headers: list[tuple[bytes, bytes]]) -> int:
            sent: list[MutableMapping[str, Any]] = []

            async def receive() -> MutableMapping[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: MutableMapping[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "GET",
                "path": "/health",
                "raw_path": b"/health",
                "query_string": b"",
                "headers": headers,
                "scheme": "http",
                "server": ("127.0.0.1", 80),
                "http_version": "1.1",
                "root_path": "",
            }
            await app(scope, receive, send)
            code = sent[0]["status"]
            assert isinstance(code, int)
            return code

        local = (b"host", b"localhost")
        origin = (b"origin", b"http://localhost")
        assert await status([local]) == 200
        assert await status([local, local]) == 421
        assert await status([local, origin]) == 200
        assert await status([local, origin, origin]) == 403
