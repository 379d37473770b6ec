"""MCP clients nobody here wrote, run from the npm registry against real server processes.

- The MCP Inspector v2 CLI (`mcp-inspector --cli`), in its legacy era (initialize handshake) and its
  modern era (pinned to 2026-07-28, `server/discover` and per-request `_meta`), on stdio, streamable
  HTTP (/mcp) and legacy SSE (/sse, legacy era only): initialize, tools/list, tools/call.
- The official conformance suite's server scenarios against /mcp, each at the revision it belongs to.

Every test runs twice: against a bare mcp 2.x low-level server (tests/reference_mcp_server.py),
which proves the command and shows what the SDK alone does, and against danube-mcp in sandbox mode.

The tools come from `bash .ci/setup-external --install` (pinned versions, in $DANUBE_EXT_CACHE,
default .ci/cache). When they are missing the tests skip with that hint; under CI=true they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from procs import LISTENING, REPO, Captured, child_env, wait_for_line

pytestmark = pytest.mark.external

MODERN = "2026-07-28"
LEGACY_LATEST = "2025-11-25"
REFERENCE_SERVER = REPO / "tests" / "reference_mcp_server.py"
NODE_MIN = (22, 19)
INSTALL_HINT = (
    "run `bash .ci/setup-external --install` (pinned Inspector, conformance suite, Node 24 if needed)"
)
RUN_TIMEOUT = 90.0


# --------------------------------------------------------------------------------------------------
# Finding the tools


def _cache_dir() -> Path:
    return Path(os.environ.get("DANUBE_EXT_CACHE") or REPO / ".ci" / "cache")


def _node_version(node: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.match(r"v(\d+)\.(\d+)", out.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


@dataclass(frozen=True)
class Tools:
    node_dir: str  # put first on PATH: the npm bin scripts start with `#!/usr/bin/env node`
    inspector: str
    conformance: str


def _find_tools() -> Tools | str:
    cache = _cache_dir()
    candidates = [str(cache / "node" / "bin" / "node"), shutil.which("node") or ""]
    node = next((c for c in candidates if c and (_node_version(c) or (0,)) >= NODE_MIN), None)
    if node is None:
        return f"no Node >= {'.'.join(map(str, NODE_MIN))}"
    bin_dir = cache / "npm" / "node_modules" / ".bin"
    inspector, conformance = bin_dir / "mcp-inspector", bin_dir / "conformance"
    missing = [p.name for p in (inspector, conformance) if not p.exists()]
    if missing:
        return f"missing {', '.join(missing)} in {bin_dir}"
    return Tools(str(Path(node).parent), str(inspector), str(conformance))


@pytest.fixture(scope="session")
def tools() -> Tools:
    found = _find_tools()
    if isinstance(found, str):
        if os.environ.get("CI") == "true":
            pytest.fail(f"external MCP clients not installed: {found}; {INSTALL_HINT}")
        pytest.skip(f"external MCP clients not installed: {found}; {INSTALL_HINT}")
    return found


def _tool_env(tools: Tools, home: Path) -> dict[str, str]:
    env = child_env(
        PATH=f"{tools.node_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(home),  # the Inspector keeps a catalog and an OAuth store under ~/.mcp-inspector
        MCP_INSPECTOR_SECRET_STORE="memory",  # no keychain here; say so instead of a warning per run
        MCP_AUTO_OPEN_ENABLED="false",
        NO_COLOR="1",
    )
    env.pop("PYTHONPATH", None)
    return env


# --------------------------------------------------------------------------------------------------
# The two servers under test


@dataclass
class Target:
    """One server kind: how to start it on stdio and over HTTP, and how to read what it stored."""

    name: str
    stdio_argv: list[str]
    http_argv: list[str]
    env: Callable[[Path], dict[str, str]]
    stored: Callable[[Path, str], str | None]  # (state dir, service_id) -> stored value
    service_id: str


def _reference_env(state: Path) -> dict[str, str]:
    return child_env(REFERENCE_MCP_STORE=str(state / "reference-store.jsonl"))


def _reference_stored(state: Path, service_id: str) -> str | None:
    path = state / "reference-store.jsonl"
    if not path.exists():
        return None
    found = None
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["service_id"] == service_id:
            found = entry["credential_value"]
    return found if isinstance(found, str) else None


def _danube_env(state: Path) -> dict[str, str]:
    return child_env(DANUBE_MCP_SANDBOX_DB=str(state / "sandbox.db"))


def _danube_stored(state: Path, service_id: str) -> str | None:
    from danube_mcp.sandbox import DEMO_API_KEY, open_store

    with open_store(state / "sandbox.db") as store:
        return store.reveal_for_tests(DEMO_API_KEY, service_id)


TARGETS = {
    "reference": Target(
        name="reference",
        stdio_argv=[sys.executable, str(REFERENCE_SERVER)],
        http_argv=[sys.executable, str(REFERENCE_SERVER), "--transport", "http", "--port", "0"],
        env=_reference_env,
        stored=_reference_stored,
        service_id="svc_reference_001",
    ),
    "danube": Target(
        name="danube",
        stdio_argv=[sys.executable, "-m", "danube_mcp", "--sandbox"],
        http_argv=[sys.executable, "-m", "danube_mcp", "--sandbox", "--transport", "http", "--port", "0"],
        env=_danube_env,
        stored=_danube_stored,
        service_id="svc_openai_001",  # one of the sandbox's built-in services
    ),
}


@pytest.fixture(scope="module", params=sorted(TARGETS))
def target(request: pytest.FixtureRequest) -> Target:
    return TARGETS[str(request.param)]


@dataclass
class HttpTarget:
    target: Target
    base_url: str
    state: Path
    err: Captured
    proc: subprocess.Popen[bytes]
    extra: dict[str, Any] = field(default_factory=dict)

    def server_output(self) -> str:
        return self.err.text()


@pytest.fixture(scope="module")
def http_target(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpTarget]:
    """The server over HTTP (/mcp and /sse on one port), one process per module and server kind."""
    state = tmp_path_factory.mktemp(f"{target.name}-http")
    err = Captured()
    proc = subprocess.Popen(
        target.http_argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err.file,
        env=target.env(state),
        cwd=str(REPO),
    )
    try:
        url = wait_for_line(err.text, LISTENING, proc)
        m = re.match(r"http://127\.0\.0\.1:(\d+)", url)
        assert m, f"unexpected listening line: {url}"
        yield HttpTarget(target, f"http://127.0.0.1:{m.group(1)}", state, err, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------------------------------
# The MCP Inspector CLI

# (transport, era). "legacy" = initialize handshake only; "modern" = pinned to 2026-07-28, no fallback;
# "auto" = server/discover first, then fall back to initialize (what Claude Code and the VS Code agent
# host do). Legacy SSE has no modern era (2026-07-28 is not defined on it): "auto" must fall back there.
INSPECTOR_CASES = [
    ("stdio", "legacy"),
    ("stdio", "modern"),
    ("stdio", "auto"),
    ("http", "legacy"),
    ("http", "modern"),
    ("http", "auto"),
    ("sse", "legacy"),
    ("sse", "auto"),
]


@dataclass
class InspectorRun:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def result(self) -> dict[str, Any]:
        assert self.code == 0, self.describe("exit code")
        try:
            out = json.loads(self.stdout)
        except ValueError:
            raise AssertionError(self.describe("stdout is not one JSON document")) from None
        assert isinstance(out, dict) and isinstance(out.get("result"), dict), self.describe("no result")
        result: dict[str, Any] = out["result"]
        return result

    def describe(self, what: str) -> str:
        return (
            f"{what}: mcp-inspector exited {self.code} after {self.seconds:.1f}s\n"
            f"argv: {self.argv}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"
        )


class Inspector:
    def __init__(
        self, tools: Tools, work: Path, server: dict[str, Any], server_output: Callable[[], str]
    ) -> None:
        self.tools = tools
        self.work = work
        self.config = work / "mcp.json"
        self.config.write_text(json.dumps({"mcpServers": {"s": server}}), encoding="utf-8")
        self.server_output = server_output
        self.runs: list[InspectorRun] = []

    def run(self, method: str, *extra: str) -> InspectorRun:
        argv = [self.tools.inspector, "--cli", "--config", str(self.config), "--server", "s"]
        argv += ["--method", method, "--format", "json", "--connect-timeout", "20000", *extra]
        started = time.monotonic()
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=_tool_env(self.tools, self.work),
            cwd=str(self.work),
            timeout=RUN_TIMEOUT,
        )
        run = InspectorRun(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        self.runs.append(run)
        return run


@pytest.fixture(params=INSPECTOR_CASES, ids=[f"{t}-{e}" for t, e in INSPECTOR_CASES])
def inspector(
    request: pytest.FixtureRequest, tools: Tools, target: Target, tmp_path: Path
) -> Iterator[tuple[Inspector, Target, Path, Callable[[], str]]]:
    transport, era = request.param
    server: dict[str, Any]
    if transport == "stdio":
        state = tmp_path / "state"
        state.mkdir()
        server = {
            "type": "stdio",
            "command": target.stdio_argv[0],
            "args": target.stdio_argv[1:],
            "env": target.env(state),
            "cwd": str(REPO),
        }
    else:
        http: HttpTarget = request.getfixturevalue("http_target")
        state = http.state
        server = {"type": transport, "url": http.base_url + ("/mcp" if transport == "http" else "/sse")}
    server["protocolEra"] = era
    insp = Inspector(tools, tmp_path, server, lambda: "")
    if transport == "stdio":
        # The Inspector relays the stdio server's stderr onto its own.
        insp.server_output = lambda: "\n".join(r.stderr for r in insp.runs)
    else:
        insp.server_output = http.server_output
    server_output = insp.server_output
    yield insp, target, state, server_output


def test_inspector_initialize_speaks_the_pinned_era(inspector: tuple[Inspector, Target, Path, Any]) -> None:
    insp, _, _, _ = inspector
    run = insp.run("initialize")
    result = run.result()
    server = json.loads(insp.config.read_text())["mcpServers"]["s"]
    era, transport = server["protocolEra"], server["type"]
    expected = LEGACY_LATEST if era == "legacy" or (era == "auto" and transport == "sse") else MODERN
    assert result.get("protocolVersion") == expected, run.describe(f"protocolVersion is not {expected}")
    assert isinstance(result.get("serverInfo"), dict) and result["serverInfo"].get("name"), run.describe(
        "serverInfo"
    )


def test_inspector_tools_list_shows_store_credential(inspector: tuple[Inspector, Target, Path, Any]) -> None:
    insp, _, _, _ = inspector
    run = insp.run("tools/list")
    tools = run.result().get("tools")
    assert isinstance(tools, list), run.describe("no tools list")
    by_name = {t.get("name"): t for t in tools if isinstance(t, dict)}
    assert "store_credential" in by_name, run.describe("store_credential missing")
    schema = by_name["store_credential"].get("inputSchema") or {}
    assert {"service_id", "credential_type", "credential_value"} <= set(schema.get("properties", {})), (
        run.describe("inputSchema lacks the three arguments")
    )


def test_inspector_tools_call_stores_the_credential(inspector: tuple[Inspector, Target, Path, Any]) -> None:
    insp, target, state, server_output = inspector
    canary = f"canary-ext-{uuid.uuid4().hex}"
    args = {"service_id": target.service_id, "credential_type": "bearer", "credential_value": canary}
    run = insp.run("tools/call", "--tool-name", "store_credential", "--tool-args-json", json.dumps(args))
    result = run.result()
    assert result.get("isError") in (False, None), run.describe("the tool reported an error")
    structured = result.get("structuredContent")
    assert isinstance(structured, dict), run.describe("no structuredContent")
    assert structured.get("success") is True, run.describe("success is not true")
    assert structured.get("service_id") == target.service_id, run.describe("wrong service_id")
    assert structured.get("credential_type") == "bearer", run.describe("wrong credential_type")
    # Really stored, with the exact value: read it back from the server's own store.
    assert target.stored(state, target.service_id) == canary, run.describe(
        "the value did not reach the store"
    )
    # Never echoed: not in the tool result, not in anything the server wrote to stderr.
    assert canary not in run.stdout, run.describe("the secret is in the tool result")
    assert canary not in server_output(), f"the secret is in the server's output:\n{server_output()[-3000:]}"


def test_inspector_sse_refuses_the_modern_era(tools: Tools, http_target: HttpTarget, tmp_path: Path) -> None:
    """Legacy SSE is initialize-era only: a client pinned to 2026-07-28 gets a clear failure, not a hang."""
    server = {"type": "sse", "url": http_target.base_url + "/sse", "protocolEra": "modern"}
    run = Inspector(tools, tmp_path, server, http_target.server_output).run("tools/list")
    assert run.code != 0, run.describe("a modern-era client was served over legacy SSE")
    assert run.seconds < 30, run.describe("the refusal took too long")


# --------------------------------------------------------------------------------------------------
# The conformance suite

# (scenario, revision): each scenario at the revision(s) the suite tags it with (`conformance list`).
CONFORMANCE_CASES = [
    ("server-initialize", LEGACY_LATEST),
    ("ping", LEGACY_LATEST),
    ("tools-list", LEGACY_LATEST),
    ("tools-list", MODERN),
    ("dns-rebinding-protection", LEGACY_LATEST),
    ("dns-rebinding-protection", MODERN),
    ("server-stateless", MODERN),
    ("caching", MODERN),
    ("http-header-validation", MODERN),
]

# Checks that test the suite's own fixture server rather than the protocol: they fail against the bare
# SDK reference server as well. Each is tolerated only with the failure message it has for that reason
# (any other failure of the same check still fails the test).
FIXTURE_ONLY: dict[tuple[str, str], str] = {
    # The suite's "everything" server has a diagnostic tool `test_missing_capability`; a server without
    # it answers "unknown tool" (danube-mcp: an isError result), so -32021 cannot be observed.
    ("server-stateless", "sep-2575-server-rejects-undeclared-capability"): "test_missing_capability",
    ("server-stateless", "sep-2575-missing-capability-http-400"): "test_missing_capability",
    # caching calls prompts/list, resources/list and resources/templates/list whether or not the
    # server declared prompts/resources; a tools-only server rightly answers -32601 Method not found.
    ("caching", "sep-2549-prompts-list-caching-hints"): "-32601",
    ("caching", "sep-2549-resources-list-caching-hints"): "-32601",
    ("caching", "sep-2549-resources-templates-list-caching-hints"): "-32601",
}


@pytest.mark.parametrize(
    ("scenario", "revision"), CONFORMANCE_CASES, ids=[f"{s}@{r}" for s, r in CONFORMANCE_CASES]
)
def test_conformance_scenario(
    tools: Tools, http_target: HttpTarget, tmp_path: Path, scenario: str, revision: str
) -> None:
    out_dir = tmp_path / "results"
    argv = [tools.conformance, "server", "--url", http_target.base_url + "/mcp"]
    argv += ["--scenario", scenario, "--spec-version", revision, "--output-dir", str(out_dir)]
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_tool_env(tools, tmp_path),
        cwd=str(tmp_path),
        timeout=RUN_TIMEOUT,
    )
    seconds = time.monotonic() - started
    files = sorted(out_dir.glob("*/checks.json"))
    assert files, (
        f"scenario did not run (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    checks: list[dict[str, Any]] = json.loads(files[-1].read_text(encoding="utf-8"))
    assert checks, "the scenario reported no checks"
    failed = [c for c in checks if c.get("status") in ("FAILURE", "WARNING")]
    unexpected = [
        c
        for c in failed
        if FIXTURE_ONLY.get((scenario, str(c.get("id")))) is None
        or FIXTURE_ONLY[(scenario, str(c.get("id")))] not in str(c.get("errorMessage"))
    ]
    report = "\n".join(
        f"- {c.get('status')} {c.get('id')}: {c.get('errorMessage')}\n"
        f"  details: {json.dumps(c.get('details'))[:1500]}"
        for c in unexpected
    )
    assert not unexpected, (
        f"{scenario}@{revision} against {http_target.target.name} ({seconds:.1f}s): "
        f"{len(unexpected)} of {len(checks)} checks failed\n{report}\n"
        f"server output (tail):\n{http_target.server_output()[-2000:]}"
    )
    # Nothing tolerated may hide a crash: the suite itself must have finished normally.
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
