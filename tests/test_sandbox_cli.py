"""The ``danube-sandbox`` command: flags, start-up errors, stdout silence and prompt shutdown."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from danube_mcp.sandbox import DEMO_API_KEY, KEY_ENV_VAR, open_store
from danube_mcp.sandbox.cli import default_db_path, main
from sandbox_proc import sandbox_command, sandbox_env, start_sandbox, wait_for_exit

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV_VAR, raising=False)


def run(command: list[str], env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=sandbox_env(env), capture_output=True, text=True, timeout=60, check=False
    )


def run_cli(db: Path, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    return run(sandbox_command(db), env)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_go_to_stdout_with_status_0(flag: str) -> None:
    result = run([sys.executable, "-m", "danube_mcp.sandbox", flag])
    assert result.returncode == 0 and result.stderr == ""
    if flag == "--version":
        assert result.stdout.startswith("danube-sandbox ")
    else:
        assert "--api-keys-file" in result.stdout


def test_every_flag_names_its_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    flags = {
        "--host": "DANUBE_SANDBOX_HOST",
        "--port": "DANUBE_SANDBOX_PORT",
        "--db": "DANUBE_SANDBOX_DB",
        "--api-key": "DANUBE_SANDBOX_API_KEYS",
        "--api-keys-file": "DANUBE_SANDBOX_API_KEYS_FILE",
        "--services": "DANUBE_SANDBOX_SERVICES",
        "--log-level": "DANUBE_SANDBOX_LOG_LEVEL",
        "--allowed-host": "DANUBE_SANDBOX_ALLOWED_HOSTS",
        "--allowed-origin": "DANUBE_SANDBOX_ALLOWED_ORIGINS",
        "--allow-public-bind": "DANUBE_SANDBOX_ALLOW_PUBLIC_BIND",
        "--device-code-ttl": "DANUBE_SANDBOX_DEVICE_CODE_TTL",
        "--device-poll-interval": "DANUBE_SANDBOX_DEVICE_POLL_INTERVAL",
    }
    for flag, env in flags.items():
        start = out.index(f" {flag} ", out.index("options:"))
        following = out[start : start + 400]
        assert env in following, flag


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "--port must be an integer between 0 and 65535"),
        (["--port", "abc"], {}, "--port must be an integer between 0 and 65535"),
        (["--port", "８０"], {}, "--port must be an integer between 0 and 65535"),
        ([], {"DANUBE_SANDBOX_PORT": "-1"}, "DANUBE_SANDBOX_PORT must be an integer between 0 and 65535"),
        (["--device-code-ttl", "0"], {}, "--device-code-ttl must be an integer between 1 and 86400"),
        ([], {"DANUBE_SANDBOX_LOG_LEVEL": "loud"}, "DANUBE_SANDBOX_LOG_LEVEL must be one of"),
        ([], {"DANUBE_SANDBOX_ALLOW_PUBLIC_BIND": "maybe"}, "DANUBE_SANDBOX_ALLOW_PUBLIC_BIND must be"),
    ],
)
def test_bad_numbers_and_choices_are_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str | None], message: str
) -> None:
    db = tmp_path / "sb.db"
    result = run([sys.executable, "-m", "danube_mcp.sandbox", "--db", str(db), *args], env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"danube-sandbox: error: {message}"] or (
        len(result.stderr.splitlines()) == 1 and message in result.stderr
    ), result.stderr
    assert "invalid _port value" not in result.stderr
    assert not db.exists()


def test_mistyped_flag_never_echoes_its_value() -> None:
    canary = "sk-canary-typo-7d1e0b"
    result = run([sys.executable, "-m", "danube_mcp.sandbox", f"--api-kee={canary}", canary])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "danube-sandbox: error: unrecognized option(s): --api-kee (see danube-sandbox --help)"
    ]
    assert canary not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"nothing": []}', '"services" list'),
        ('[{"id": "svc_x"}]', '"name"'),
        ('[{"id": "", "name": "X"}]', '"id"'),
        ('[{"id": "svc_x", "name": "X", "requires_credentials": "yes"}]', "requires_credentials"),
        (None, "cannot read services file"),
    ],
)
def test_bad_services_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    services = tmp_path / "services.json"
    if content is not None:
        services.write_text(content)
    assert main(["--db", str(tmp_path / "sb.db"), "--services", str(services)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("danube-sandbox: error: ") and message in err


def test_empty_api_key_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(tmp_path / "sb.db"), "--api-key", " "]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "danube-sandbox: error: --api-key must not be empty\n"
    assert not (tmp_path / "sb.db").exists()


def test_wrong_or_malformed_env_key_exits_2(tmp_path: Path) -> None:
    db = tmp_path / "sb.db"
    right = base64.b64encode(os.urandom(32)).decode()
    with open_store(db, key=base64.b64decode(right)) as created:
        created.put_sync(DEMO_API_KEY, "svc_openai_001", "bearer", "v")
    wrong = base64.b64encode(os.urandom(32)).decode()
    for bad, message in [
        (wrong, "not the key"),
        ("bm90IDMyIGJ5dGVz", "32 bytes"),
        ("%%%", "not valid base64"),
    ]:
        result = run_cli(db, {KEY_ENV_VAR: bad})
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("danube-sandbox: error: ") and message in lines[0]
        assert bad not in result.stderr
    # The wrong key file is refused the same way.
    Path(f"{db}.key").write_text(wrong)
    Path(f"{db}.key").chmod(0o600)
    result = run_cli(db)
    assert result.returncode == 2 and "not the key" in result.stderr and result.stdout == ""


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = sandbox_command(tmp_path / "sb.db", extra_args=["--port", str(port)])  # the last wins
        result = run(command)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"danube-sandbox: error: port {port} on 127.0.0.1 is already in use: stop what uses it, or pick"
        " another with --port (DANUBE_SANDBOX_PORT); 0 picks a free one"
    ]
    assert not (tmp_path / "sb.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_promptly_with_status_0(tmp_path: Path, sig: signal.Signals) -> None:
    with start_sandbox(tmp_path) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url) as idle:  # a kept-alive connection stays open
            assert (await idle.get("/health")).status_code == 200
            sandbox.proc.send_signal(sig)
            assert wait_for_exit(sandbox.proc, 5.0) == 0, sandbox.stderr_text()
    assert sandbox.stdout_bytes() == b""
    assert "Traceback" not in sandbox.stderr_text()


async def test_services_file_adds_and_replaces_entries(tmp_path: Path) -> None:
    services = tmp_path / "services.json"
    entries = [
        {"id": "svc_custom_001", "name": "Custom"},
        {"id": "svc_openai_001", "name": "OpenAI (renamed)", "requires_credentials": True},
    ]
    services.write_text(json.dumps({"services": entries}))
    with start_sandbox(tmp_path, extra_args=("--services", str(services))) as sandbox:
        async with httpx2.AsyncClient(base_url=sandbox.url, headers={"danube-api-key": DEMO_API_KEY}) as c:
            catalog = {
                entry["id"]: entry["name"] for entry in (await c.get("/v1/services")).json()["services"]
            }
            body = {"service_id": "svc_custom_001", "credential_type": "api_key", "credential_value": "abc"}
            stored = await c.post("/v1/credentials/store", json=body)
    assert catalog["svc_custom_001"] == "Custom"
    assert catalog["svc_openai_001"] == "OpenAI (renamed)"
    assert catalog["svc_github_001"] == "GitHub"
    assert stored.status_code == 200 and stored.json()["service_name"] == "Custom"


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "danube-mcp" / "sandbox.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "danube-mcp" / "sandbox.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "danube-mcp" / "sandbox.db"


def test_package_import_is_light() -> None:
    code = "import sys, danube_mcp.sandbox; sys.stderr.write(str('uvicorn' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=sandbox_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr == "False"
