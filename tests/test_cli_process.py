"""Start-up behaviour of real ``python -m danube_mcp`` processes: a port already in use is one
line and exit 2 on every HTTP transport, the HTTP start-up note about callers' own keys, core
dumps off in a running server, and the note for a person who starts it in a terminal."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from procs import LISTENING, REPO, Captured, child_env, raw_stdio, wait_for_line

HTTP_TRANSPORTS = ("streamable-http", "sse", "http")
KEY = "dk-CANARY-process-0123456789abcdef"
NOTE = re.compile(r"(danube-mcp: this is an MCP server)")


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "danube_mcp", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
    )


@contextmanager
def busy_port() -> Iterator[int]:
    """A port another program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Port already in use


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_port_in_use_is_one_line_and_exit_2(transport: str) -> None:
    with busy_port() as port:
        out = run("--transport", transport, "--port", str(port))
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        f"danube-mcp: port {port} is already in use (127.0.0.1:{port}): stop the other program or "
        "choose another port with --port or DANUBE_MCP_PORT (0 picks a free one)"
    ]


def test_port_in_use_from_the_environment_and_on_localhost() -> None:
    with busy_port() as port:
        out = run("--host", "localhost", DANUBE_MCP_TRANSPORT="streamable-http", DANUBE_MCP_PORT=str(port))
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert f"port {port} is already in use" in line and "DANUBE_MCP_PORT" in line


def test_an_address_this_machine_does_not_have() -> None:
    out = run("--transport", "sse", "--host", "192.0.2.1", "--allowed-host", "example.test", "--port", "0")
    assert out.returncode == 2
    (line,) = out.stderr.splitlines()
    assert line.startswith("danube-mcp: cannot listen on 192.0.2.1:0: this machine has no such address")
    assert "DANUBE_MCP_HOST" in line


# --------------------------------------------------------------------------------------------
# A running server child: the HTTP key note, core dumps off


@contextmanager
def server(env: dict[str, str], *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Captured]]:
    """``danube-mcp`` over HTTP on a free port."""
    err = Captured()
    proc = subprocess.Popen(
        [sys.executable, "-m", "danube_mcp", "--port", "0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err.file,
        env=env,
        cwd=str(REPO),
    )
    try:
        wait_for_line(err.text, LISTENING, proc)
        yield proc, err
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def key_notes(err: Captured) -> list[str]:
    return [line for line in err.text().splitlines() if "danube-api-key header" in line]


@pytest.mark.parametrize("transport", HTTP_TRANSPORTS)
def test_http_without_a_server_key_says_callers_bring_their_own(transport: str) -> None:
    with server(child_env(), "--transport", transport) as (_, err):
        notes = key_notes(err)
    assert len(notes) == 1, err.text()
    assert notes[0].startswith("danube-mcp: note: DANUBE_API_KEY is not set, so every caller must send")
    assert "--require-client-key" in notes[0]


@pytest.mark.parametrize(
    ("env", "args"),
    [
        ({"DANUBE_API_KEY": KEY}, ()),
        ({}, ("--require-client-key",)),
        ({"DANUBE_MCP_REQUIRE_CLIENT_KEY": "1"}, ()),
    ],
    ids=["server-key", "require-flag", "require-env"],
)
def test_no_key_note_when_it_does_not_apply(env: dict[str, str], args: tuple[str, ...]) -> None:
    with server(child_env(**env), "--transport", "streamable-http", *args) as (_, err):
        assert key_notes(err) == []
        assert KEY not in err.text()


def read_core_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        (line,) = [x for x in f if x.startswith("Max core file size")]
    return " ".join(line.split())


@pytest.fixture
def core_files_allowed() -> Iterator[None]:
    """Children inherit a non-zero core-file limit (as after `ulimit -c unlimited`), so a server
    that did not lower it would show it: without this the tests below could not fail."""
    resource = pytest.importorskip("resource")
    before = resource.getrlimit(resource.RLIMIT_CORE)
    if before[1] == 0:
        pytest.skip("the hard core-file limit here is 0: nothing for the server to lower")
    resource.setrlimit(resource.RLIMIT_CORE, (before[1], before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.usefixtures("core_files_allowed")
def test_core_dumps_are_off_in_a_running_http_server() -> None:
    with server(child_env(DANUBE_API_KEY=KEY), "--transport", "streamable-http") as (proc, _):
        assert read_core_limit(proc.pid) == "Max core file size 0 0 bytes"
        if os.getuid() != 0:  # PR_SET_DUMPABLE 0: /proc/<pid>/environ (the key) is root's now
            assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.usefixtures("core_files_allowed")
def test_core_dumps_are_off_in_a_running_stdio_server() -> None:
    with raw_stdio(child_env(DANUBE_API_KEY=KEY)) as raw:
        raw.initialize()  # running and serving
        assert read_core_limit(raw.proc.pid) == "Max core file size 0 0 bytes"
        assert "this is an MCP server" not in raw.err.text()  # stdin is a pipe: no terminal note


# --------------------------------------------------------------------------------------------
# Started by hand in a terminal


def test_in_a_terminal_it_explains_itself_and_still_serves(tmp_path: object) -> None:
    pty = pytest.importorskip("pty", reason="needs a pseudo-terminal")
    master, slave = pty.openpty()
    err = Captured()
    proc = subprocess.Popen(
        [sys.executable, "-m", "danube_mcp", "--sandbox", "--sandbox-db", f"{tmp_path}/s.db"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=err.file,
        env=child_env(),
        cwd=str(REPO),
    )
    os.close(slave)
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_for_line(err.text, NOTE, proc)
        note = err.text()
        assert "meant to be" in note and "started by an MCP host" in note
        assert "danube-mcp --self-test --sandbox" in note
        assert "npx @modelcontextprotocol/inspector danube-mcp --sandbox" in note
        # Still a server: an initialize typed into the terminal is answered on stdout.
        request = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "tty", "version": "0"},
            },
        }
        os.write(master, json.dumps(request).encode() + b"\n")
        answer = json.loads(lines.get(timeout=20))
        assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "danube-mcp"
        os.write(master, b"\x04")  # Ctrl+D: end of input
        assert proc.wait(20) == 0
        assert err.text().count("this is an MCP server") == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_a_state_url_over_stdio_is_noted_not_used_and_not_printed(tmp_path: Path) -> None:
    """Shared state is for HTTP replicas: over stdio the server says so in one line and serves
    from its own memory; the URL (which may carry a Redis password) is never printed."""
    url = "redis://:pw-CANARY-redis-5555@127.0.0.1:1/0"
    done = subprocess.run(
        [sys.executable, "-m", "danube_mcp", "--sandbox", "--sandbox-db", str(tmp_path / "s.db")],
        input=b"",
        capture_output=True,
        env=child_env(DANUBE_MCP_STATE_URL=url),
        cwd=str(REPO),
        timeout=60,
    )
    notes = [line for line in done.stderr.decode().splitlines() if "DANUBE_MCP_STATE_URL" in line]
    assert done.returncode == 0, done.stderr
    assert len(notes) == 1 and "HTTP transports only" in notes[0]
    assert b"CANARY" not in done.stderr + done.stdout
