"""``danube-mcp store``: a real child process, its value typed at a pseudo-terminal or piped in.

Against the sandbox (``--sandbox`` with a temporary database, read back to prove the exact value
arrived) and against a fake Danube on 127.0.0.1 for the failure paths, which echo the value and
the key back: neither may appear on stdout, stderr or in the JSON, whatever happens.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from danube_mcp import keyfile
from danube_mcp.sandbox import DEMO_API_KEY, open_store
from upstream import FakeUpstream, Reply

REPO = Path(__file__).resolve().parent.parent
# The commands' own entry point; `python -m danube_mcp store ...` once cli.py dispatches to it.
ENTRY = [sys.executable, "-m", "danube_mcp.commands"]

VALUE = "sk-CANARY-store-value-7f3a9c1e5b"
KEY = "dk-CANARY-store-apikey-0123456789"
SERVICE = "svc_openai_001"
PROMPT = b"(typing is hidden): "


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(tmp / "home"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_DATA_HOME": str(tmp / "data"),
        "DANUBE_MCP_SANDBOX_DB": str(tmp / "sandbox.db"),
    }
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """The command with a pipe (or nothing) on stdin and no controlling terminal."""
    return subprocess.run(
        [*ENTRY, "store", *args],
        env=env,
        cwd=str(REPO),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        start_new_session=True,  # no /dev/tty: the hidden prompt cannot be used by accident
    )


def assert_clean(*texts: bytes | str, value: str = VALUE, key: str = KEY) -> None:
    for text in texts:
        t = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for secret in (value, key):
            assert secret not in t
            assert secret[4:16] not in t  # no recognisable fragment either


def sandbox_value(tmp: Path, service: str = SERVICE) -> str | None:
    store = open_store(tmp / "sandbox.db")
    try:
        return store.reveal_for_tests(DEMO_API_KEY, service)
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------
# Through a pseudo-terminal: the hidden prompt


class Terminal:
    """The command with a pseudo-terminal as its controlling terminal and stdin; stdout is a pipe."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        out_r, out_w = os.pipe()
        pid, fd = pty.fork()
        if pid == 0:  # the child: pty.fork made the terminal its stdin, stderr and /dev/tty
            os.dup2(out_w, 1)
            os.close(out_r)
            os.chdir(REPO)
            os.execve(ENTRY[0], [*ENTRY, "store", *args], env)  # noqa: S606
        os.close(out_w)
        self.pid, self.fd, self.out_fd = pid, fd, out_r
        self.screen = b""  # everything the terminal showed (prompt, echo, stderr)

    def read_until(self, needle: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{needle!r} never appeared; screen: {self.screen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready and not self._read_once():
                raise EOFError(f"terminal closed before {needle!r}; screen: {self.screen!r}")

    def _read_once(self) -> bool:
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the child has gone and the terminal closed
            return False
        self.screen += chunk
        return bool(chunk)

    def type(self, text: bytes) -> None:
        os.write(self.fd, text)

    def finish(self, timeout: float = 30) -> tuple[int, bytes]:
        """Wait for exit; return (exit code, stdout). Drains the terminal meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                raise TimeoutError(f"the command did not exit; screen: {self.screen!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                self._read_once()
        while select.select([self.fd], [], [], 0)[0] and self._read_once():
            pass
        chunks = []
        while chunk := os.read(self.out_fd, 65536):
            chunks.append(chunk)
        os.close(self.out_fd)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status), b"".join(chunks)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for t in made:  # a failed test must not leave a child behind
        try:
            os.kill(t.pid, 9)
            os.waitpid(t.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_hidden_prompt_stores_without_echo(tmp: Path, terminal: list[Terminal]) -> None:
    t = Terminal([SERVICE, "--type", "bearer", "--sandbox"], env_for(tmp))
    terminal.append(t)
    t.read_until(PROMPT)
    assert b"Bearer token for svc_openai_001" in t.screen
    t.type(VALUE.encode() + b"\r")
    code, stdout = t.finish()
    assert code == 0, t.screen
    assert (
        stdout.decode()
        == "Stored the bearer token for OpenAI (svc_openai_001) in the local sandbox (not in Danube).\n"
    )
    assert PROMPT not in stdout  # the prompt went to the terminal, not to stdout
    assert_clean(t.screen, stdout)  # typing was not echoed back
    assert sandbox_value(tmp) == VALUE


def test_hidden_prompt_refuses_an_empty_value(tmp: Path, terminal: list[Terminal]) -> None:
    t = Terminal([SERVICE, "--type", "api_key", "--sandbox"], env_for(tmp))
    terminal.append(t)
    t.read_until(PROMPT)
    assert b"API key for svc_openai_001 (typing is hidden)" in t.screen
    t.type(b"\r")
    code, stdout = t.finish()
    assert code == 2 and stdout == b""
    assert b"no value was entered; nothing was stored" in t.screen
    assert sandbox_value(tmp) is None


def test_ctrl_c_at_the_prompt_exits_130(tmp: Path, terminal: list[Terminal]) -> None:
    t = Terminal([SERVICE, "--type", "api_key", "--sandbox", "--json"], env_for(tmp))
    terminal.append(t)
    t.read_until(PROMPT)
    t.type(b"\x03")
    code, stdout = t.finish()
    assert code == 130, t.screen
    assert b"Traceback" not in t.screen
    assert json.loads(stdout) == {
        "success": False,
        "service_id": SERVICE,
        "credential_type": "api_key",
        "error": "cancelled; nothing was stored",
        "kind": "interrupted",
    }


def test_without_a_terminal_the_prompt_is_refused(tmp: Path) -> None:
    proc = run([SERVICE, "--type", "bearer", "--sandbox"], env_for(tmp))
    assert proc.returncode == 2 and proc.stdout == b""
    assert "--value-stdin" in proc.stderr.decode()


# --------------------------------------------------------------------------------------------------
# Through standard input, against the sandbox


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_value_stdin_strips_one_line_ending(tmp: Path, ending: bytes) -> None:
    proc = run(
        [SERVICE, "--type", "api_key", "--value-stdin", "--sandbox", "--json"],
        env_for(tmp),
        VALUE.encode() + ending,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "success": True,
        "service_id": SERVICE,
        "service_name": "OpenAI",
        "credential_type": "api_key",
        "stored_as": "value",
        "sandbox": True,
    }
    assert_clean(proc.stdout, proc.stderr)
    assert "SANDBOX MODE" in proc.stderr.decode()
    assert sandbox_value(tmp) == VALUE


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [
        (b"", "standard input was empty"),
        (b"\n", "standard input was empty"),
        (b"  \n", "the value must not be empty"),
        (VALUE.encode() + b"\n\n", "line break"),
        (b" " + VALUE.encode(), "leading or trailing whitespace"),
        (b"\xff\xfe" + VALUE.encode(), "not valid UTF-8"),
        (b"x" * 20000, "the value must be at most 16384 characters"),
        (b"x" * 70000, "longer than 16384 characters"),  # not even read beyond the limit
    ],
)
def test_bad_values_exit_2_without_echo(tmp: Path, stdin: bytes, expected: str) -> None:
    proc = run([SERVICE, "--type", "bearer", "--value-stdin", "--sandbox"], env_for(tmp), stdin)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b"", err
    assert expected in err
    assert_clean(err)
    assert sandbox_value(tmp) is None


def test_unknown_service_in_the_sandbox_is_a_refusal(tmp: Path) -> None:
    proc = run(
        ["svc_does_not_exist", "--type", "bearer", "--value-stdin", "--sandbox"], env_for(tmp), VALUE.encode()
    )
    assert proc.returncode == 1 and proc.stdout == b""
    assert "HTTP 404" in proc.stderr.decode()
    assert_clean(proc.stderr)


@pytest.mark.parametrize(
    ("args", "expected", "kind"),
    [
        ([SERVICE, "--type", VALUE, "--value-stdin"], "--type must be 'bearer' or 'api_key'", "usage"),
        ([SERVICE, VALUE, "--type", "bearer", "--value-stdin"], "never taken from the command line", "usage"),
        ([SERVICE, "--type", "bearer", "--value", VALUE], "never taken from the command line", "usage"),
        ([SERVICE, "--value-stdin"], "the following arguments are required: --type", "usage"),
        ([SERVICE, "--type", "bearer", "--value-stdin"], "no Danube API key", "configuration"),
        ([SERVICE, "--type", "bearer", "--value-stdin", "--sandbox-db", "x.db"], "only makes sense", "usage"),
        (
            ["svc bad", "--type", "bearer", "--value-stdin", "--sandbox"],
            "service_id: must not contain",
            "usage",
        ),
    ],
)
def test_usage_and_configuration_errors_exit_2(tmp: Path, args: list[str], expected: str, kind: str) -> None:
    human = run(args, env_for(tmp), VALUE.encode())
    assert human.returncode == 2 and human.stdout == b""
    assert expected in human.stderr.decode()
    assert_clean(human.stderr)
    as_json = run([*args, "--json"], env_for(tmp), VALUE.encode())
    assert as_json.returncode == 2
    data = json.loads(as_json.stdout)
    assert data["success"] is False and data["kind"] == kind and expected in data["error"]
    assert_clean(as_json.stdout, as_json.stderr)


def test_an_unusable_sandbox_database_fails_before_reading_the_value(tmp: Path) -> None:
    (tmp / "no").write_text("")  # a file where the database's folder should be
    proc = run(
        [SERVICE, "--type", "bearer", "--value-stdin", "--sandbox", "--sandbox-db", str(tmp / "no" / "x.db")],
        env_for(tmp),
        VALUE.encode(),
    )
    assert proc.returncode == 2 and str(tmp / "no") in proc.stderr.decode()


# --------------------------------------------------------------------------------------------------
# Against a fake Danube on 127.0.0.1


def echo_everything() -> dict[str, Any]:
    """An error body that echoes the request (the value) and the key, in every field it has."""
    return {
        "error": {
            "code": "bad {key}",
            "message": "refused {body} for key {key}",
            "details": {"hint": "{body}"},
        }
    }


def upstream_env(tmp: Path, up: FakeUpstream, **extra: str) -> dict[str, str]:
    return env_for(tmp, DANUBE_API_KEY=KEY, DANUBE_API_URL=up.url, DANUBE_MAX_RETRIES="0", **extra)


def test_stored_in_danube_with_the_key_and_exact_value(tmp: Path, upstream: FakeUpstream) -> None:
    proc = run(
        [SERVICE, "--type", "bearer", "--value-stdin"], upstream_env(tmp, upstream), VALUE.encode() + b"\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"Stored the bearer token for Service {SERVICE} ({SERVICE}) in Danube.\n"
    (req,) = upstream.requests
    assert (req.method, req.path) == ("POST", "/v1/credentials/store")
    assert req.headers["danube-api-key"] == KEY
    assert req.json() == {"service_id": SERVICE, "credential_type": "bearer", "credential_value": VALUE}
    assert_clean(proc.stdout, proc.stderr)


@pytest.mark.parametrize("json_mode", [False, True])
@pytest.mark.parametrize(
    ("reply", "kind", "status", "says"),
    [
        (Reply(status=400, echo_template=echo_everything()), "validation", 400, "HTTP 400"),
        (Reply(status=422, echo_body=True), "validation", 422, "HTTP 422"),
        (
            Reply(status=401, echo_template=echo_everything(), reason_template="no {key}"),
            "authentication",
            401,
            "danube-mcp login",
        ),
        (
            Reply(status=200, echo_template={"success": False, "error": "cannot store {body}"}),
            "refused",
            200,
            "refused",
        ),
        (Reply(status=503, echo_template=echo_everything()), "server", 503, "HTTP 503"),
    ],
)
def test_refusals_exit_1_and_never_show_a_secret(
    tmp: Path, upstream: FakeUpstream, reply: Reply, kind: str, status: int, says: str, json_mode: bool
) -> None:
    upstream.script(reply)
    args = [SERVICE, "--type", "api_key", "--value-stdin"] + (["--json"] if json_mode else [])
    proc = run(args, upstream_env(tmp, upstream, DANUBE_MCP_LOG_LEVEL="DEBUG"), VALUE.encode())
    assert proc.returncode == 1, proc.stderr
    assert len(upstream.requests) == 1
    assert_clean(proc.stdout, proc.stderr)
    if json_mode:
        data = json.loads(proc.stdout)
        assert data["success"] is False and data["kind"] == kind and data["status"] == status
        assert (data["service_id"], data["credential_type"]) == (SERVICE, "api_key")
        assert says in data["error"]
    else:
        assert proc.stdout == b""
        assert says in proc.stderr.decode()


def test_unreachable_danube_is_exit_1(tmp: Path) -> None:
    with FakeUpstream() as up:
        url = up.url
    proc = run(
        [SERVICE, "--type", "bearer", "--value-stdin", "--json"],
        env_for(tmp, DANUBE_API_KEY=KEY, DANUBE_API_URL=url),
        VALUE.encode(),
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["kind"] == "connection"
    assert_clean(proc.stdout, proc.stderr)


def test_uses_the_key_stored_by_login(tmp: Path, upstream: FakeUpstream) -> None:
    # Random-looking on purpose: the scrubber drops any line sharing 8 letters with a key, and
    # words like "stored by login" appear in the message this test expects.
    stored_key = "dk-CANARY-7f3a9c0e5b1d2468ace13579"
    keyfile.save(
        tmp / "config" / "danube-mcp" / "credentials.json",
        api_key=stored_key,
        api_url=upstream.url,
        org_id="org_7",
    )
    env = env_for(tmp, DANUBE_MCP_LOG_LEVEL="DEBUG")  # no DANUBE_API_KEY, no DANUBE_API_URL
    ok = run([SERVICE, "--type", "bearer", "--value-stdin"], env, VALUE.encode())
    assert ok.returncode == 0, ok.stderr
    (req,) = upstream.requests
    assert req.headers["danube-api-key"] == stored_key and req.headers["danube-org-id"] == "org_7"
    # A 401 that echoes the stored key: the message names where the key came from, never the key.
    upstream.script(Reply(status=401, echo_template=echo_everything(), reason_template="bad {key}"))
    bad = run([SERVICE, "--type", "bearer", "--value-stdin"], env, VALUE.encode())
    assert bad.returncode == 1
    err = bad.stderr.decode()
    assert "danube-mcp login" in err and "credentials.json" in err
    assert_clean(bad.stdout, bad.stderr, key=stored_key)


def test_dispatch_returns_exit_codes_for_help_and_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    from danube_mcp.commands import dispatch

    assert dispatch("store", ["--help"]) == 0
    assert "--value-stdin" in capsys.readouterr().out
    assert dispatch("login", ["--nope"]) == 2
    assert dispatch("frobnicate", []) == 2
    assert "the commands are login, logout, store" in capsys.readouterr().err
