"""The main job end to end against ``danube-sandbox`` running as a real process.

``danube-mcp`` (stdio and streamable HTTP) → ``danube-sandbox`` on an ephemeral port → SQLite,
then the sandbox's own listing proves what was stored, and under which key, without the value.
Also ``--sandbox`` (in-process) and ``--self-test``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from procs import REPO, child_env, http_server, mcp_http, mcp_stdio
from sandbox_proc import start_sandbox

pytestmark = pytest.mark.anyio

KEY_1 = "sbx-CANARY-key-one-0123456789abcdef"
KEY_2 = "sbx-CANARY-key-two-fedcba9876543210"
SECRET = "sk-CANARY-sandbox-value-5555555555555555"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with start_sandbox(tmp_path_factory.mktemp("sbx"), api_keys=(KEY_1, KEY_2)) as sb:
        yield sb


def stored(url: str, key: str) -> dict[str, dict[str, Any]]:
    r = httpx2.get(f"{url}/v1/credentials", headers={"danube-api-key": key})
    r.raise_for_status()
    data = r.json()
    items = data["credentials"] if isinstance(data, dict) else data
    assert SECRET not in r.text
    return {item["service_id"]: item for item in items}


async def test_stdio_against_sandbox_process(sandbox: Any) -> None:
    env = child_env(DANUBE_API_KEY=KEY_1, DANUBE_API_URL=sandbox.url, DANUBE_MCP_LOG_LEVEL="DEBUG")
    async with mcp_stdio(env) as (client, err):
        ok = await client.call_tool(
            "store_credential",
            {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET},
        )
        ref = await client.call_tool(
            "store_credential",
            {
                "service_id": "svc_github_001",
                "credential_type": "api_key",
                "credential_value": "env://GH_TOKEN",
            },
        )
        missing = await client.call_tool(
            "store_credential",
            {"service_id": "svc_nope_404", "credential_type": "bearer", "credential_value": SECRET},
        )
    assert ok.is_error is False
    assert ok.structured_content == {
        "success": True,
        "service_id": "svc_openai_001",
        "service_name": "OpenAI",
        "credential_type": "bearer",
        "stored_as": "value",
    }
    assert ref.structured_content is not None and ref.structured_content["stored_as"] == "reference"
    assert "reference" in ref.content[0].text  # type: ignore[union-attr]
    assert missing.is_error is True and "HTTP 404" in missing.content[0].text  # type: ignore[union-attr]
    listing = stored(sandbox.url, KEY_1)
    assert listing["svc_openai_001"]["credential_type"] == "bearer"
    assert listing["svc_github_001"]["stored_as"] == "reference"
    everything = err.text() + ok.model_dump_json() + missing.model_dump_json() + sandbox.stderr_text()
    assert SECRET not in everything and KEY_1 not in everything


async def test_http_against_sandbox_process_keeps_callers_apart(sandbox: Any) -> None:
    env = child_env(DANUBE_API_URL=sandbox.url, DANUBE_MCP_LOG_LEVEL="DEBUG")  # no server key at all
    with http_server(env, ("--transport", "streamable-http", "--require-client-key")) as srv:
        async with mcp_http(f"{srv.url}/mcp", headers={"danube-api-key": KEY_2}) as client:
            result = await client.call_tool(
                "store_credential",
                {"service_id": "svc_anthropic_001", "credential_type": "api_key", "credential_value": SECRET},
            )
        assert result.is_error is False
        assert "svc_anthropic_001" in stored(sandbox.url, KEY_2)
        assert "svc_anthropic_001" not in stored(sandbox.url, KEY_1)
        assert SECRET not in srv.err.text() and KEY_2 not in srv.err.text()


async def test_in_process_sandbox_marks_results(tmp_path: Path) -> None:
    env = child_env(DANUBE_MCP_LOG_LEVEL="INFO")
    args = ("--sandbox", "--sandbox-db", str(tmp_path / "s.db"))
    async with mcp_stdio(env, args) as (client, err):
        result = await client.call_tool(
            "store_credential",
            {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": SECRET},
        )
    assert result.is_error is False
    assert result.content[0].text.startswith("[SANDBOX")  # type: ignore[union-attr]
    assert result.structured_content is not None and result.structured_content["sandbox"] is True
    assert "SANDBOX MODE" in err.text()
    assert SECRET not in err.text()
    db = (tmp_path / "s.db").read_bytes()
    assert SECRET.encode() not in db


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "danube_mcp", *args],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=str(REPO),
    )


def test_self_test_with_sandbox_stores_a_demo_credential(tmp_path: Path) -> None:
    out = run_cli("--sandbox", "--sandbox-db", str(tmp_path / "s.db"), "--self-test")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "store_credential found" in out.stdout
    assert "success=True" in out.stdout and "sandbox=True" in out.stdout
    assert "result:            OK" in out.stdout


def test_self_test_without_sandbox_never_stores(sandbox: Any) -> None:
    # /v1/_stats counts store requests and stores only, so the self-test's two read-only
    # GET /v1/api-keys (without a key, then with it) leave it unchanged.
    before = httpx2.get(f"{sandbox.url}/v1/_stats").json()
    out = run_cli("--self-test", DANUBE_API_KEY=KEY_1, DANUBE_API_URL=sandbox.url)
    after = httpx2.get(f"{sandbox.url}/v1/_stats").json()
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(before) == {"store_requests", "stored"}
    assert before == after  # not a single POST /v1/credentials/store, let alone a store
    assert "Danube answers:    OK (GET /v1/api-keys without a key: 401" in out.stdout
    assert "API key:           OK" in out.stdout and "GET /v1/api-keys" in out.stdout
    assert KEY_1 not in out.stdout + out.stderr
    assert KEY_1[-4:] in out.stdout  # masked: only the last four characters
    assert "nothing was stored" in out.stdout


def test_self_test_fails_without_a_key() -> None:
    out = run_cli("--self-test", DANUBE_API_KEY="${DANUBE_API_KEY}")
    assert out.returncode == 1
    assert "placeholder" in out.stdout and "FAILED" in out.stdout


def test_examples_in_process() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "in_process.py")],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "'success': True" in out.stdout


def test_examples_over_stdio(sandbox: Any) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "store_over_stdio.py")],
        env=child_env(DANUBE_API_KEY=KEY_1, DANUBE_API_URL=sandbox.url, OPENAI_API_KEY=SECRET),
        capture_output=True,
        text=True,
        timeout=60,
        # The example passes the server only its two variables (no PYTHONPATH), as an agent would
        # with an installed package; from src/, ``python -m danube_mcp`` finds the checkout.
        cwd=str(REPO / "src"),
    )
    assert out.returncode == 0, out.stderr
    assert "'service_name': 'OpenAI'" in out.stdout
    assert SECRET not in out.stdout + out.stderr


def test_docs_show_the_tested_examples() -> None:
    """docs/agent-code.md shows the examples these tests run, verbatim; the README links both."""
    page = (REPO / "docs" / "agent-code.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/agent-code.md)" in readme
    for name in ("store_over_stdio.py", "in_process.py"):
        body = (REPO / "examples" / name).read_text(encoding="utf-8")
        assert body.strip() in page, f"docs/agent-code.md's copy of examples/{name} is out of date"
        assert f"(examples/{name})" in readme


def test_mcp_json_example_matches_the_readme() -> None:
    import json

    config = json.loads((REPO / "mcp.json.example").read_text(encoding="utf-8"))
    servers = config["mcpServers"]
    assert servers["danube"]["command"].endswith("danube-mcp")
    assert set(servers["danube"]["env"]) == {"DANUBE_API_KEY"}
    assert servers["danube-sandbox"]["args"] == ["--sandbox"]
    assert servers["danube-http"]["url"].endswith("/mcp")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "mcp.json.example" in readme and '"args": ["--sandbox"]' in readme


def test_quick_start_on_a_fresh_home(tmp_path: Path) -> None:
    """The README's quick start: no data folder yet, nothing but --sandbox --self-test."""
    out = run_cli("--sandbox", "--self-test", HOME=str(tmp_path / "home"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result:            OK" in out.stdout
    db = tmp_path / "home" / ".local" / "share" / "danube-mcp" / "sandbox.db"
    assert db.exists() and (db.stat().st_mode & 0o777) == 0o600


def test_unusable_sandbox_database_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = run_cli("--sandbox", "--sandbox-db", str(blocker / "s.db"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("danube-mcp: ")
    assert f"sandbox folder {blocker} is a file, not a folder" in lines[0]
    assert out.stdout == ""
