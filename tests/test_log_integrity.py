"""Log integrity (issue 12, items 6 and 7, and the link-token item of its Also list).

* Nothing a client sends can forge, split or colour a log line: every control character (C0, DEL,
  C1 with NEL), ANSI escapes, U+2028/U+2029 and bidi overrides are escaped, in the message and in
  every argument; traceback lines are indented.
* A call's secrets are masked only in that call's own records: another caller choosing a "secret"
  cannot blank or drop anyone else's line. Process-wide secrets stay masked everywhere.
* Secure-input link tokens are masked by pattern, whether live, used, expired or made up.

The last tests run a real uvicorn process with this logging set-up and send it raw requests.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from danube_mcp.logs import LINK_PATH, REDACTED, SECRETS, WITHHELD, escape_line, mask_links, setup_logging

REPO = Path(__file__).resolve().parent.parent
CALL_VALUE = "CANARY-call-value-5f0e9d8c7b6a"
SERVER_KEY = "sk-CANARY-server-key-0a1b2c3d4e5f6789"

HOSTILE = [
    "\x1b[31mRED\x1b[0m",  # ANSI colour
    "\x1b]0;title\x07",  # OSC: set terminal title
    "\x9b31m",  # C1 CSI
    "line\r\n2026-11-30 00:00:00,000 INFO danube_mcp: forged",
    "nel\x85forged",
    "ls\u2028forged",
    "ps\u2029forged",
    "nul\x00 del\x7f bel\x07 tab\t vt\x0b ff\x0c",
    "bidi\u202egnp.exe",
]


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("DEBUG", buf)
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def ours(stream: io.StringIO, name: str = "danube_mcp") -> list[str]:
    """The lines of one logger (asyncio may add its own DEBUG line about the event loop)."""
    return [line for line in stream.getvalue().splitlines() if f" {name}" in line]


def assert_clean_lines(text: str, records: int) -> None:
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == records, lines
    for line in lines[:-1]:
        assert line.isprintable(), repr(line)
        assert not any(ch in line for ch in "\x1b\x85\u2028\u2029\u202e\r")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_controls_escaped_in_message_and_arguments(stream: io.StringIO, hostile: str) -> None:
    log = logging.getLogger("danube_mcp.test")
    log.warning("arg: %s", hostile)
    log.warning("msg: " + hostile)
    log.warning("dict arg: %(v)s", {"v": hostile})
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/1.1" %d', "127.0.0.1:1", "GET", "/" + hostile, 404
    )
    assert_clean_lines(stream.getvalue(), 4)


def test_escapes_are_readable() -> None:
    assert escape_line("a\x1b[31mb\r\nc\x85d\u2028e") == "a\\x1b[31mb\\r\\nc\\x85d\\u2028e"
    assert escape_line("plain text") == "plain text"


def test_traceback_lines_are_indented_and_escaped(stream: io.StringIO) -> None:
    try:
        raise ValueError("boom\n2026-11-30 00:00:00,000 CRITICAL forged \x1b[2J")
    except ValueError:
        logging.getLogger("danube_mcp.test").exception("failed")
    lines = stream.getvalue().splitlines()
    assert "failed" in lines[0]
    assert all(line.startswith("  ") for line in lines[1:]), lines
    assert "\x1b" not in stream.getvalue()


def test_stack_info_is_indented(stream: io.StringIO) -> None:
    logging.getLogger("danube_mcp.test").warning("with stack", stack_info=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) > 1 and all(line.startswith("  ") for line in lines[1:])


# --------------------------------------------------------------------------------------------
# Per-call secrets


@pytest.mark.anyio
async def test_a_callers_secret_does_not_touch_other_calls_lines(stream: io.StringIO) -> None:
    """The attacker's call "holds" words that occur in the victim's lines, while both run."""
    log = logging.getLogger("danube_mcp.tool")
    victim_line = "store_credential: stored bearer for svc_openai_001 via POST /mcp"
    attacker_holds = ("svc_openai_001", "stored bearer for", victim_line[5:25])
    held = anyio.Event()
    victim_done = anyio.Event()

    async def attacker() -> None:
        with SECRETS.holding(*attacker_holds):
            held.set()
            await victim_done.wait()
            log.warning("attacker line mentions svc_openai_001")

    async def victim() -> None:
        await held.wait()
        log.warning(victim_line)
        victim_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(attacker)
        tg.start_soon(victim)
    text = "\n".join(ours(stream))
    assert victim_line in text  # neither blanked nor dropped
    assert "attacker line mentions" in text and "svc_openai_001" not in text.split(victim_line)[1]
    assert len(ours(stream)) == 2


@pytest.mark.anyio
async def test_a_calls_own_secrets_are_masked_in_its_records(stream: io.StringIO) -> None:
    log = logging.getLogger("danube_mcp.tool")
    with SECRETS.holding(CALL_VALUE, None, ""):
        log.warning("value %s", CALL_VALUE)
        log.warning("spaced %s", " ".join(CALL_VALUE))
        log.warning("cut %s", CALL_VALUE[3:17])

        async def child() -> None:  # tasks the call starts inherit its secrets
            log.warning("child %s", CALL_VALUE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
    log.warning("after: %s", CALL_VALUE)  # no longer held: this one is the test's own doing
    lines = ours(stream)
    assert len(lines) == 5  # nothing dropped
    assert lines[0].endswith(f"value {REDACTED}")
    assert lines[1].endswith(REDACTED) and lines[2].endswith(REDACTED)
    assert lines[3].endswith(f"child {REDACTED}")
    assert lines[4].endswith(f"after: {CALL_VALUE}")
    assert CALL_VALUE not in "\n".join(lines[:4])


@pytest.mark.anyio
async def test_process_wide_secrets_are_masked_in_every_context(stream: io.StringIO) -> None:
    import base64

    SECRETS.add(SERVER_KEY)
    try:
        log = logging.getLogger("somelib")

        async def elsewhere() -> None:
            log.warning("key %s", SERVER_KEY)
            log.warning("basic %s", base64.b64encode(f"u:{SERVER_KEY}".encode()).decode())

        async with anyio.create_task_group() as tg:
            tg.start_soon(elsewhere)
    finally:
        SECRETS.remove(SERVER_KEY)
    lines = ours(stream, "somelib")
    assert len(lines) == 2
    assert lines[0].endswith(f"key {REDACTED}") and lines[1].endswith(REDACTED)
    assert SERVER_KEY not in SECRETS.snapshot()


def test_holding_keeps_the_call_site_shape() -> None:
    with SECRETS.holding(CALL_VALUE, SERVER_KEY):
        assert {CALL_VALUE, SERVER_KEY} <= set(SECRETS.snapshot())
    assert CALL_VALUE not in SECRETS.snapshot()


# --------------------------------------------------------------------------------------------
# Link tokens, markers


def test_link_path_matches_the_broker() -> None:
    from danube_mcp.secure_input import PATH_PREFIX

    assert LINK_PATH == PATH_PREFIX


@pytest.mark.parametrize(
    "path",
    [
        "/secure-input/{t}",
        "/secure-input/{t}?x=1",
        "/secure-input//{t}",
        "%2Fsecure-input%2F{t}",
        "%252Fsecure-input%252F{t}",
        "https://h.example/SECURE-INPUT/{t}",
    ],
)
def test_link_tokens_masked_by_pattern(path: str) -> None:
    token = "CANARYtok_" + "x9" * 16
    out = mask_links(f'"GET {path.format(t=token)} HTTP/1.1" 410')
    assert token not in out and REDACTED in out


def test_used_and_expired_tokens_are_masked(stream: io.StringIO) -> None:
    import anyio

    from danube_mcp.secure_input import PATH_PREFIX, SecureInputBroker

    broker = SecureInputBroker(ttl=30)

    async def used_token() -> str:
        entry, token = await broker.open_entry("svc_openai_001", "bearer", caller="c", flow="link")
        await broker.store.discard(entry.entry_id, "used")
        return token

    used = anyio.run(used_token)
    made_up = "notAtoken-" + "Q" * 33
    access = logging.getLogger("uvicorn.access")
    access.info('"GET %s%s HTTP/1.1" 410', PATH_PREFIX, used)
    access.info('"POST %s%s HTTP/1.1" 410', PATH_PREFIX, made_up)
    text = stream.getvalue()
    assert used not in text and made_up not in text
    assert text.count(REDACTED) == 2


def test_marker_in_an_access_line_withholds_but_keeps_the_line(stream: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info('"GET /Received JSON:{x} HTTP/1.1" 404')
    logging.getLogger("mcp.server.streamable_http").warning("Received JSON: {...}")  # SDK: dropped
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and WITHHELD in lines[0] and "uvicorn.access" in lines[0]


def test_unformattable_record_still_makes_a_line(stream: io.StringIO) -> None:
    logging.getLogger("danube_mcp.test").warning("%d items", "not a number")
    assert "unformattable log record" in stream.getvalue()


# --------------------------------------------------------------------------------------------
# A real server process, raw requests on a real socket

CHILD = """
import logging, socket
import uvicorn
from danube_mcp.logs import setup_logging

log = logging.getLogger("danube_mcp.transports.probe")

async def app(scope, receive, send):
    # Like a transport refusing a request and saying why: it quotes the path and a header.
    probe = dict(scope["headers"]).get(b"x-probe", b"").decode("latin-1")
    log.warning("refused %s (probe %s)", scope["path"], probe)
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})

sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(16)  # connections wait in the backlog until the server runs: no start-up race
print(sock.getsockname()[1], flush=True)
setup_logging("INFO")
config = uvicorn.Config(app, log_config=None, access_log=True, lifespan="off", log_level="info")
uvicorn.Server(config).run(sockets=[sock])
"""

# (request target, raw X-Probe header value): percent-escapes reach scope["path"] decoded, and
# header bytes 0x80-0xFF (allowed as obs-text) arrive as C1 controls once decoded as latin-1.
RAW_REQUESTS = [
    ("/a%1b[31mRED%1b[0m", b"\x9b31mred"),
    ("/nel%c2%85forged", b"x\x85forged"),
    ("/ls%e2%80%a8forged", b"ls"),
    ("/crlf%0d%0a2026-11-30%2000:00:00,000%20INFO%20forged", b"ok"),
    ("/secure-input/CANARYlinktoken_abcdefghijklmnopqrstuvwxyz0123", b"ok"),
    ("/Received%20JSON:%7B%7D", b"ok"),
]


def _request(port: int, target: str, probe: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        s.sendall(head + b"X-Probe: " + probe + b"\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_real_access_log_cannot_be_forged_or_coloured() -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for target, probe in RAW_REQUESTS:
            assert _request(port, target, probe).startswith(b"HTTP/1.1 404")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    text = err.decode("utf-8", "replace")
    access = [line for line in text.splitlines() if "uvicorn.access" in line]
    ours = [line for line in text.splitlines() if "danube_mcp.transports.probe" in line]
    assert len(access) == len(ours) == len(RAW_REQUESTS), text  # one line per event, none dropped
    assert "forged" in text  # the attempts are logged, as text inside their own line
    for line in text.splitlines():
        assert line.isprintable(), repr(line)
        assert "uvicorn" in line or "danube" in line or line.startswith("  "), repr(line)
    assert not any(ch in text for ch in "\x1b\x85\x9b\u2028\r")
    assert "\\x1b[31m" in text and "\\x85forged" in text and "\\u2028" in text and "\\r\\n2026" in text
    assert "CANARYlinktoken" not in text
    assert any(WITHHELD in line for line in ours)
