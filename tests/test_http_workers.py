"""``uvicorn --factory danube_mcp.http:create_app --workers N``: Nagle's algorithm is turned off on
the socket uvicorn binds (its protocol number is 0, so asyncio would leave it on and every answer
would wait for a delayed ACK), and several workers serve 2026-07-28 calls."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from danube_mcp.transports.http import nodelay_on_listeners
from procs import MODERN, REPO, child_env, modern_meta
from upstream import FakeUpstream

TOKEN = "tok-CANARY-workers-token-777777777777"
SECRET = "sk-CANARY-workers-value-888888888888"


def test_listening_socket_without_protocol_number_gets_nodelay() -> None:
    listener = socket.socket(socket.AF_INET)  # how uvicorn binds for --workers: proto 0
    assert listener.proto == 0
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert nodelay_on_listeners() >= 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_two_workers_serve_calls(upstream: FakeUpstream, tmp_path: Path) -> None:
    port = free_port()
    env = child_env(
        DANUBE_API_KEY="dk-CANARY-workers-key-9999999999999",
        DANUBE_API_URL=upstream.url,
        DANUBE_MCP_TRANSPORT="streamable-http",
        DANUBE_MCP_STATELESS="1",
        DANUBE_MCP_JSON_RESPONSE="1",
        DANUBE_MCP_AUTH_TOKEN=TOKEN,
    )
    argv = [sys.executable, "-m", "uvicorn", "--factory", "danube_mcp.http:create_app", "--workers", "2",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", "--no-access-log"]  # fmt: skip
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while err.read_bytes().count(b"Application startup complete") < 2:
            assert time.monotonic() < deadline and proc.poll() is None, err.read_text(errors="replace")
            time.sleep(0.05)
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "store_credential",
                "arguments": {
                    "service_id": "svc_w_001",
                    "credential_type": "bearer",
                    "credential_value": SECRET,
                },
                "_meta": modern_meta(),
            },
        }
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "authorization": f"Bearer {TOKEN}",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
            "mcp-name": "store_credential",
        }
        for _ in range(8):  # new connections each time: both workers get some
            r = httpx2.post(
                f"http://127.0.0.1:{port}/mcp", content=json.dumps(body), headers=headers, timeout=15
            )
            assert r.status_code == 200 and r.json()["result"]["isError"] is False
        assert len(upstream.requests) == 8
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert SECRET.encode() not in err.read_bytes()
