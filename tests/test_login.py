"""``danube-mcp login`` / ``logout`` and the stored key, against a fake device-flow server on 127.0.0.1.

The fake speaks Danube's device flow (RFC 8628): ``POST /v1/auth/device/code`` then
``POST /v1/auth/device/token`` answered from a script (428 pending, 429 or ``slow_down``, 410
expired, 200 with the key). The command runs as a real child process where the behaviour is
visible from outside (exit code, stdout, stderr, the file it writes); the polling arithmetic is
checked in-process with a fake clock so no test waits out a real 5-second slow-down.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from danube_mcp import keyfile
from danube_mcp.config import load_settings
from danube_mcp.login import DeviceFlow, LoginFailed

REPO = Path(__file__).resolve().parent.parent
# The commands' own entry point; `python -m danube_mcp login ...` once cli.py dispatches to it.
ENTRY = [sys.executable, "-m", "danube_mcp.commands"]

API_KEY = "dk-CANARY-login-key-0123456789abcdef"
DEVICE_CODE = "devcode-CANARY-5f1e2d3c4b5a69788796"
USER_CODE = "WDJB-MJHT"
PENDING = (428, {"error": {"code": "authorization_pending", "message": "waiting for the user"}})
APPROVED = (200, {"api_key": API_KEY, "key_id": "key_123"})


# --------------------------------------------------------------------------------------------------
# The fake device-flow server


class DeviceServer:
    """Danube's device-flow endpoints, scripted. Records every request with its arrival time."""

    def __init__(
        self,
        token_replies: list[tuple[int, Any]],
        *,
        default: tuple[int, Any] = PENDING,
        expires_in: float = 30,
        interval: float = 0.2,
    ) -> None:
        self.token_replies = list(token_replies)
        self.default = default
        self.expires_in = expires_in
        self.interval = interval
        self.requests: list[tuple[float, str, dict[str, str], Any]] = []
        self._cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    data = json.loads(body)
                except ValueError:
                    data = None
                with server._cond:
                    server.requests.append(
                        (time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, data)
                    )
                    server._cond.notify_all()
                    status, reply = server._answer(self.path)
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _answer(self, path: str) -> tuple[int, Any]:
        if path == "/v1/auth/device/code":
            return 200, {
                "device_code": DEVICE_CODE,
                "user_code": USER_CODE,
                "verification_url": f"{self.url}/device",
                "expires_in": self.expires_in,
                "interval": self.interval,
            }
        if path == "/v1/auth/device/token":
            return self.token_replies.pop(0) if self.token_replies else self.default
        return 404, {"error": {"code": "not_found", "message": "no such path"}}

    def polls(self) -> list[tuple[float, str, dict[str, str], Any]]:
        return [r for r in self.requests if r[1] == "/v1/auth/device/token"]

    def wait_for(self, n_requests: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n_requests:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"saw {len(self.requests)} requests, wanted {n_requests}")
                self._cond.wait(left)

    def __enter__(self) -> DeviceServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


# --------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO / "src"),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(home / "home"),
        "XDG_CONFIG_HOME": str(home / "config"),
    }
    env.update(extra)
    return env


def cred_path(home: Path) -> Path:
    return home / "config" / "danube-mcp" / "credentials.json"


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*ENTRY, *args],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_no_secret(*texts: bytes | str) -> None:
    for text in texts:
        t = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        assert API_KEY not in t
        assert DEVICE_CODE not in t
        assert API_KEY[-12:] not in t and DEVICE_CODE[-12:] not in t


# --------------------------------------------------------------------------------------------------
# The command, as a child process


def test_login_pending_twice_then_approved(home: Path) -> None:
    with DeviceServer([PENDING, PENDING, APPROVED], interval=0.2) as srv:
        proc = run(
            ["login", "--api-url", srv.url + "/", "--org", "org_42"],
            env_for(home, DANUBE_MCP_LOG_LEVEL="DEBUG"),  # the most talkative logs: still no secret
        )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout == b""  # stdout stays empty: everything is said on stderr
    assert f"{srv.url}/device" in err and USER_CODE in err
    assert str(cred_path(home)) in err and "Logged in for organisation org_42" in err
    assert_no_secret(proc.stdout, proc.stderr)

    code_req = srv.requests[0]
    assert code_req[1] == "/v1/auth/device/code" and code_req[3] == {"client_name": "danube-mcp"}
    assert code_req[2]["danube-org-id"] == "org_42"
    polls = srv.polls()
    assert [p[3] for p in polls] == [{"device_code": DEVICE_CODE}] * 3
    # Never faster than the interval Danube asked for.
    times = [code_req[0]] + [p[0] for p in polls]
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(times)), times

    path = cred_path(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert (data["api_key"], data["api_url"], data["org_id"]) == (API_KEY, srv.url, "org_42")
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp file left

    # The server's settings now use it (key, URL and org) when DANUBE_API_KEY is unset.
    s = load_settings({"XDG_CONFIG_HOME": str(home / "config")})
    assert s.api_key is not None and s.api_key.get_secret_value() == API_KEY
    assert (s.api_url, s.org_id, s.api_key_problem) == (srv.url, "org_42", None)
    assert s.api_key_source is not None and str(path) in s.api_key_source and "login" in s.api_key_source
    assert API_KEY not in repr(s)

    # logout removes it and says where it was; a second logout has nothing to do.
    out = run(["logout"], env_for(home))
    assert out.returncode == 0 and out.stdout == b""
    assert str(path) in out.stderr.decode() and "Removed" in out.stderr.decode()
    assert not path.exists()
    again = run(["logout"], env_for(home))
    assert again.returncode == 0 and "nothing to remove" in again.stderr.decode()
    assert load_settings({"XDG_CONFIG_HOME": str(home / "config")}).api_key is None


def test_login_expired_code_is_a_clear_failure(home: Path) -> None:
    expired = (410, {"error": {"code": "expired_token", "message": "device code expired"}})
    with DeviceServer([PENDING, expired], interval=0.1) as srv:
        proc = run(["login", "--api-url", srv.url], env_for(home))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "expired" in err and "danube-mcp login" in err
    assert "Traceback" not in err and proc.stdout == b""
    assert not cred_path(home).exists()
    assert_no_secret(proc.stderr)


def test_login_gives_up_at_expires_in_without_an_answer(home: Path) -> None:
    with DeviceServer([], default=PENDING, expires_in=1, interval=0.2) as srv:
        started = time.monotonic()
        proc = run(["login", "--api-url", srv.url], env_for(home))
        polls = len(srv.polls())
    assert proc.returncode == 1 and "expired" in proc.stderr.decode()
    assert 2 <= polls <= 4  # at most one per 0.2 s within the 1 s the code lives
    assert time.monotonic() - started < 30
    assert not cred_path(home).exists()


def test_login_denied_and_refused_start(home: Path) -> None:
    with DeviceServer([(400, {"error": "access_denied"})], interval=0.1) as srv:
        proc = run(["login", "--api-url", srv.url], env_for(home))
    assert proc.returncode == 1 and "denied" in proc.stderr.decode()
    # A URL with a path is refused before any request (the base address is wanted): exit 2.
    with DeviceServer([]) as srv:
        proc = run(["login", "--api-url", srv.url + "/nothing-here"], env_for(home))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "without a path" in err and "--api-url" in err
    assert len(err.strip().splitlines()) == 1
    assert not cred_path(home).exists()


def test_login_ctrl_c_exits_130_and_stores_nothing(home: Path) -> None:
    with DeviceServer([], default=PENDING, interval=0.2) as srv:
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [*ENTRY, "login", "--api-url", srv.url],
                env=env_for(home),
                cwd=str(REPO),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            try:
                srv.wait_for(2)  # the code was issued and the first poll made: it is waiting
                proc.send_signal(signal.SIGINT)
                out, _ = proc.communicate(timeout=15)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            text = err.read().decode()
    assert proc.returncode == 130, text
    assert "cancelled" in text and "Traceback" not in text and out == b""
    assert not cred_path(home).exists()


@pytest.mark.parametrize(
    ("args", "extra_env", "expected"),
    [
        (["--api-url", "http://danube.example.com"], {}, "plain http://"),
        (["--api-url", "ftp://x"], {}, "--api-url must be an http"),
        (["--org", "a\tb"], {}, "--org must be"),
        ([], {"DANUBE_API_URL": "${DANUBE_API_URL}"}, "DANUBE_API_URL is an unsubstituted placeholder"),
        (["--bogus"], {}, "unrecognized arguments"),
    ],
)
def test_login_usage_errors_exit_2(
    home: Path, args: list[str], extra_env: dict[str, str], expected: str
) -> None:
    proc = run(["login", *args], env_for(home, **extra_env))
    assert proc.returncode == 2
    assert expected in proc.stderr.decode()
    assert len(proc.stderr.decode().strip().splitlines()) == 1


def test_login_refuses_a_folder_others_can_write_before_asking(home: Path) -> None:
    folder = home / "config" / "danube-mcp"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)  # noqa: S103 (the unsafe case under test)
    with DeviceServer([APPROVED]) as srv:
        proc = run(["login", "--api-url", srv.url], env_for(home))
        assert srv.requests == []  # nobody was asked to approve anything
    assert proc.returncode == 2 and "other users" in proc.stderr.decode()


# --------------------------------------------------------------------------------------------------
# The polling rules, in-process with a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def http() -> Iterator[httpx2.Client]:
    with httpx2.Client(trust_env=False, timeout=10) as client:
        yield client


def test_slow_down_adds_five_seconds_for_good(http: httpx2.Client) -> None:
    replies = [
        PENDING,
        (400, {"error": "slow_down"}),
        (429, {"error": {"code": "slow_down"}}),
        PENDING,
        APPROVED,
    ]
    with DeviceServer(replies, interval=1, expires_in=120) as srv:
        clock = FakeClock()
        flow = DeviceFlow(http, srv.url, sleep=clock.sleep, clock=clock)
        code = flow.start()
        assert flow.wait_for_key(code) == API_KEY
    assert clock.slept == [1, 1, 6, 11, 11]
    assert flow.polls == 5


def test_deadline_is_expires_in(http: httpx2.Client) -> None:
    with DeviceServer([], default=PENDING, interval=0.3, expires_in=1) as srv:
        clock = FakeClock()
        flow = DeviceFlow(http, srv.url, sleep=clock.sleep, clock=clock)
        code = flow.start()
        with pytest.raises(LoginFailed, match="expired"):
            flow.wait_for_key(code)
    assert flow.polls == 3  # at 0.3, 0.6, 0.9; the wait that reaches 1.0 ends it without a poll
    assert clock.slept == [0.3, 0.3, 0.3, 0.1]


def test_missing_interval_means_five_seconds_and_errors_are_scrubbed(http: httpx2.Client) -> None:
    echo = (400, {"error": {"code": "bad", "message": f"bad device_code {DEVICE_CODE}"}})
    with DeviceServer([echo]) as srv:
        srv.interval = None  # type: ignore[assignment]
        clock = FakeClock()
        flow = DeviceFlow(http, srv.url, sleep=clock.sleep, clock=clock)
        code = flow.start()
        assert code.interval == 5.0
        with pytest.raises(LoginFailed) as info:
            flow.wait_for_key(code)
    assert "HTTP 400" in str(info.value)
    assert_no_secret(str(info.value), repr(code))


# --------------------------------------------------------------------------------------------------
# The key file and the settings fallback


def cfg_env(home: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(home / "config"), **extra}


def save(home: Path, url: str = "https://api.danubeai.com", org: str | None = "org_1") -> Path:
    path = cred_path(home)
    keyfile.save(path, api_key=API_KEY, api_url=url, org_id=org)
    return path


def test_save_is_0600_in_0700_and_replaces_atomically(home: Path) -> None:
    path = cred_path(home)
    path.parent.mkdir(parents=True)
    path.write_text("old")
    os.chmod(path, 0o644)
    os.chmod(path.parent, 0o755)  # noqa: S103 (tightened by save)
    keyfile.save(path, api_key=API_KEY, api_url="https://api.danubeai.com", org_id=None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials.json"]
    stored = keyfile.load(path)
    assert stored is not None and stored.api_key == API_KEY and stored.org_id is None
    assert API_KEY not in repr(stored)


def test_env_key_wins_and_url_org_env_override(home: Path) -> None:
    save(home)
    s = load_settings(cfg_env(home, DANUBE_API_KEY="dk-from-env-0123456789"))
    assert s.api_key is not None and s.api_key.get_secret_value() == "dk-from-env-0123456789"
    assert s.api_key_source == "DANUBE_API_KEY" and s.org_id is None
    # An empty DANUBE_API_KEY (a host config with a blank entry) falls back too.
    s = load_settings(cfg_env(home, DANUBE_API_KEY=""))
    assert s.api_key is not None and s.api_key.get_secret_value() == API_KEY
    # DANUBE_ORG_ID overrides the stored org; the same URL in DANUBE_API_URL is fine.
    s = load_settings(cfg_env(home, DANUBE_ORG_ID="org_env", DANUBE_API_URL="https://api.danubeai.com/"))
    assert s.api_key is not None and s.org_id == "org_env"


def test_key_is_never_sent_to_another_url(home: Path) -> None:
    save(home)
    s = load_settings(cfg_env(home, DANUBE_API_URL="https://other.example"))
    assert s.api_key is None and s.api_url == "https://other.example"
    assert s.api_key_problem is not None
    assert "not set" in s.api_key_problem and "https://api.danubeai.com" in s.api_key_problem
    assert "danube-mcp login --api-url https://other.example" in s.api_key_problem


def _problem(home: Path) -> str:
    s = load_settings(cfg_env(home))
    assert s.api_key is None and s.api_key_problem is not None
    assert API_KEY not in s.api_key_problem
    return s.api_key_problem


def test_group_or_other_readable_file_is_refused(home: Path) -> None:
    path = save(home)
    for mode in (0o640, 0o604, 0o660):
        os.chmod(path, mode)
        problem = _problem(home)
        assert "not set, and the stored key cannot be used" in problem
        assert f"chmod 600 {path}" in problem
    os.chmod(path, 0o600)
    assert load_settings(cfg_env(home)).api_key is not None


def test_folder_others_can_write_is_refused(home: Path) -> None:
    path = save(home)
    os.chmod(path.parent, 0o777)  # noqa: S103 (the unsafe case under test)
    assert "chmod 700" in _problem(home)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_file_owned_by_someone_else_is_refused(home: Path) -> None:
    path = save(home)
    os.chown(path, 65534, 65534)
    assert "not owned by you" in _problem(home)


def test_symlink_and_garbage_are_refused(home: Path) -> None:
    path = save(home)
    real = path.with_name("real.json")
    os.replace(path, real)
    path.symlink_to(real)
    assert "symbolic link" in _problem(home)
    path.unlink()
    path.write_text("{not json")
    os.chmod(path, 0o600)
    assert "not a valid danube-mcp key file" in _problem(home)
    path.write_text(json.dumps({"version": 1, "api_key": "a\nb", "api_url": "https://x.example"}))
    assert "no usable API key" in _problem(home)
    path.write_text(json.dumps({"version": 1, "api_key": API_KEY, "api_url": "http://evil.example"}))
    assert "plain http://" in _problem(home)


def test_no_home_means_no_stored_key() -> None:
    s = load_settings({})
    assert s.api_key is None and s.api_key_problem == "not set" and s.api_key_source is None


@pytest.mark.parametrize(
    ("env", "platform", "expected"),
    [
        ({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}, "linux", "/x/cfg/danube-mcp"),
        ({"XDG_CONFIG_HOME": "relative", "HOME": "/h"}, "linux", "/h/.config/danube-mcp"),
        ({"HOME": "/h"}, "linux", "/h/.config/danube-mcp"),
        ({"HOME": "/Users/a"}, "darwin", "/Users/a/Library/Application Support/danube-mcp"),
        ({"APPDATA": "C:/Users/a/AppData/Roaming"}, "win32", "C:/Users/a/AppData/Roaming/danube-mcp"),
        ({}, "linux", None),
        ({}, "win32", None),
    ],
)
def test_config_dir_per_platform(env: dict[str, str], platform: str, expected: str | None) -> None:
    got = keyfile.config_dir(env, platform)
    assert (str(got) if got is not None else None) == (str(Path(expected)) if expected else None)
