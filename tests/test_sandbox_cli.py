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
def test_help_and_version_never_write_stdout(capsys: pytest.CaptureFixture[str], flag: str) -> None:
    assert main([flag]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "--api-key" in err if flag == "--help" else "danube-sandbox" in err


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


def test_empty_api_key_and_bad_port_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(tmp_path / "sb.db"), "--api-key", " "]) == 2
    assert main(["--port", "70000"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--api-key must not be empty" in err and "65535" in err
    assert not (tmp_path / "sb.db").exists()


def test_missing_db_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(tmp_path / "no" / "such" / "sb.db")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot create sandbox database" in err


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
    result = run_cli(db)
    assert result.returncode == 2 and "not the key" in result.stderr and result.stdout == ""


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        command = sandbox_command(tmp_path / "sb.db", extra_args=["--port", str(port)])  # the last wins
        result = run(command)
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and "listening on" not in result.stderr


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
