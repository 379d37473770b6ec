"""Packaging: the MCP Bundle, the registry entry (server.json), uvx, and the container image.

The quick checks run everywhere. Tests that build something are marked ``packaging`` (bundle,
wheel, uvx) or ``container`` (podman); ``.ci/setup-packaging`` installs their tools into
``~/.cache/danube-mcp-packaging`` (or ``$DANUBE_PACKAGING_CACHE``). Without a tool they skip with
the reason, except under ``CI=true``, where a missing tool is a failure.

Every server is started the way its installer would start it and spoken to with raw JSON-RPC over
its real stdio pipe or its real HTTP port, not through the SDK client.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx2
import jsonschema  # type: ignore[import-untyped]
import pytest

from danube_mcp import __version__
from danube_mcp.tool.handler import TOOL_NAME

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging"
SCHEMA_PATH = PACKAGING / "schemas" / "server.schema.json"
SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
# sha256 of the published file; packaging/schemas/README.md says where it comes from.
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
SERVER_JSON = json.loads((REPO / "server.json").read_text(encoding="utf-8"))
SERVER_NAME: str = SERVER_JSON["name"]
INSTALL_DRAFT = REPO / "docs" / "install.md"

CACHE = Path(os.environ.get("DANUBE_PACKAGING_CACHE") or Path.home() / ".cache" / "danube-mcp-packaging")
BASE_IMAGE = os.environ.get("DANUBE_TEST_BASE_IMAGE", "localhost/danube-mcp-base:bookworm")

PROTOCOL = "2025-11-25"
API_KEY_CANARY = "dk-CANARY-" + uuid.uuid4().hex
CREDENTIAL_CANARY = "sk-CREDCANARY-" + uuid.uuid4().hex
TOKEN_CANARY = "tok-CANARY-" + uuid.uuid4().hex


# --------------------------------------------------------------------------------------------
# Tools


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _tool(name: str, env_var: str, cached: Path) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    if cached.exists():
        return str(cached)
    return shutil.which(name)


def require(tool: str | None, what: str) -> str:
    """The tool's path; without it, skip (locally) or fail (under CI=true) with the reason."""
    if tool:
        return tool
    message = f"{what} is not installed: run .ci/setup-packaging --install (see docs/install.md)"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def mcpb_cli() -> str:
    return require(_tool("mcpb", "MCPB", CACHE / "npm" / "node_modules" / ".bin" / "mcpb"), "mcpb (npm)")


def uv_bin(name: str) -> str:
    return require(_tool(name, name.upper(), CACHE / "uv-venv" / "bin" / name), f"{name} (PyPI uv)")


def uv_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "PYTHON", "VIRTUAL_ENV"))}
    env["UV_CACHE_DIR"] = str(CACHE / "uv-cache")
    env["UV_NO_PROGRESS"] = "1"
    for secret in ("DANUBE_API_KEY", "DANUBE_MCP_AUTH_TOKEN"):
        env.pop(secret, None)
    return env


# --------------------------------------------------------------------------------------------
# A raw JSON-RPC peer over a child's stdio


class StdioPeer:
    """A child process spoken to with newline-delimited JSON-RPC on its real pipes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
        )
        self.stdout_lines: list[bytes] = []
        self.stderr_chunks: list[bytes] = []
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump_out, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._pump_err, args=(self.proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_out(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _pump_err(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 4096), b""):
            self.stderr_chunks.append(chunk)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()

    def request(
        self, rid: int, method: str, params: dict[str, Any] | None = None, timeout: float = 30
    ) -> Any:
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, **({"params": params} if params else {})})
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer to {method}; stderr: {self.stderr()[-1500:]}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise EOFError(f"server closed stdout before answering {method}: {self.stderr()[-1500:]}")
            message = json.loads(line)
            if message.get("id") == rid:
                assert "error" not in message, message
                return message["result"]

    def handshake(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            1,
            "initialize",
            {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "packaging-test", "version": "0"},
            },
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    def close(self) -> int:
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for thread in self._threads:
            thread.join(10)
        return code


def store_args(value: str = CREDENTIAL_CANARY) -> dict[str, Any]:
    return {
        "name": TOOL_NAME,
        "arguments": {"service_id": "svc_openai_001", "credential_type": "bearer", "credential_value": value},
    }


def assert_stdout_is_protocol(peer: StdioPeer) -> None:
    assert peer.stdout_lines, "nothing on stdout"
    for line in peer.stdout_lines:
        assert json.loads(line).get("jsonrpc") == "2.0", line[:200]


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        for canary in (API_KEY_CANARY, CREDENTIAL_CANARY, TOKEN_CANARY):
            assert canary not in text
            assert canary[-16:] not in text  # nor a recognisable tail of it


# --------------------------------------------------------------------------------------------
# server.json and the registry schema


def registry_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_stored_registry_schema_is_the_published_2025_12_11_file() -> None:
    data = SCHEMA_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256
    assert json.loads(data)["$id"] == SCHEMA_URL == SERVER_JSON["$schema"]


def test_server_json_is_valid_against_the_stored_schema() -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in registry_validator().iter_errors(SERVER_JSON)]
    assert errors == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("description",), "x" * 101),
        (("name",), "danube-mcp"),
        (("packages", 0, "version"), "latest"),
        (("packages", 0, "transport", "type"), "carrier-pigeon"),
    ],
)
def test_the_schema_check_rejects_broken_entries(path: tuple[Any, ...], value: Any) -> None:
    broken = json.loads(json.dumps(SERVER_JSON))
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(registry_validator().iter_errors(broken))


def test_server_json_agrees_with_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert re.fullmatch(r"io\.github\.[A-Za-z0-9-]+/danube-mcp", SERVER_NAME)
    assert SERVER_JSON["version"] == __version__
    pypi = [p for p in SERVER_JSON["packages"] if p["registryType"] == "pypi"]
    assert len(pypi) == 1
    assert pypi[0]["identifier"] == project["name"]
    assert pypi[0]["version"] == __version__
    assert pypi[0]["runtimeHint"] == "uvx"
    assert pypi[0]["transport"] == {"type": "stdio"}
    assert "danube-mcp" in project["scripts"]  # what `uvx danube-mcp` runs
    for package in SERVER_JSON["packages"]:
        for variable in package.get("environmentVariables", []):
            secret = variable["name"] in ("DANUBE_API_KEY", "DANUBE_MCP_AUTH_TOKEN")
            assert variable.get("isSecret", False) is secret, variable["name"]
    oci = [p for p in SERVER_JSON["packages"] if p["registryType"] == "oci"]
    assert len(oci) == 1
    assert oci[0]["identifier"].endswith(f":{__version__}")
    assert oci[0]["transport"]["type"] == "streamable-http"
    assert oci[0]["transport"]["url"].endswith("/mcp")
    assert all(h["isSecret"] for h in oci[0]["transport"]["headers"])


def test_install_draft_carries_the_mcp_name_marker() -> None:
    # PyPI ownership: the published README must contain "mcp-name: <name>" followed by a boundary.
    marker = f"<!-- mcp-name: {SERVER_NAME} -->"
    assert marker in INSTALL_DRAFT.read_text(encoding="utf-8").splitlines()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    if "mcp-name:" not in readme:
        message = f"README.md lacks the line {marker!r} (fold docs/install.md into it)"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    assert re.search(rf"mcp-name: {re.escape(SERVER_NAME)}(\s|-->|$)", readme)


# --------------------------------------------------------------------------------------------
# Quick checks of the bundle inputs and the container recipe


def test_committed_icon_is_the_generated_one() -> None:
    sys.path.insert(0, str(PACKAGING))
    try:
        import icon
    finally:
        sys.path.remove(str(PACKAGING))
    data = (PACKAGING / "icon.png").read_bytes()
    assert icon.png_size(data) == (icon.SIZE, icon.SIZE) == (512, 512)
    assert data == icon.png_bytes()


def test_manifest_template_declares_the_served_tool_and_a_secret_key() -> None:
    manifest = json.loads((PACKAGING / "manifest.template.json").read_text(encoding="utf-8"))
    assert [t["name"] for t in manifest["tools"]] == [TOOL_NAME]
    assert manifest["user_config"]["danube_api_key"]["sensitive"] is True
    env = manifest["server"]["mcp_config"]["env"]
    assert env["DANUBE_API_KEY"] == "${user_config.danube_api_key}"
    used = set(re.findall(r"\$\{user_config\.([a-z_]+)\}", json.dumps(manifest["server"])))
    assert used == set(manifest["user_config"])
    assert all(url.startswith("https://") for url in manifest["privacy_policies"])


def test_dockerfile_rules() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert f'io.modelcontextprotocol.server.name="{SERVER_NAME}"' in text
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.MULTILINE)
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage
    assert "DANUBE_MCP_TRANSPORT=streamable-http" in final_stage
    # No secret is given a value at build time.
    for line in text.splitlines():
        if line.lstrip().startswith(("ENV", "ARG", "LABEL")) or line.startswith("    "):
            assert not re.search(r"(API_KEY|AUTH_TOKEN|SANDBOX_KEY)\w*\s*=", line), line
    ignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") :] == ["*", "!dist/wheelhouse/"]


# --------------------------------------------------------------------------------------------
# The MCP Bundle


def test_bundle_entry_point_refuses_another_python_in_one_line(tmp_path: Path) -> None:
    sys.path.insert(0, str(PACKAGING))
    try:
        import build_mcpb
    finally:
        sys.path.remove(str(PACKAGING))
    other = (3, sys.version_info[1] + 1)
    main_py = tmp_path / "server" / "main.py"
    main_py.parent.mkdir()
    main_py.write_text(build_mcpb.MAIN_PY.format(major=other[0], minor=other[1]), encoding="utf-8")
    done = subprocess.run([sys.executable, "-I", str(main_py)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert f"built for Python 3.{other[1]} but the host started Python 3.{sys.version_info[1]}" in done.stderr


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mcpb") / f"danube-mcp-{__version__}.mcpb"
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "build_mcpb.py"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(out)
    return out


@pytest.fixture(scope="module")
def unpacked(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A path with a space, as on many desktops ("Application Support").
    target = tmp_path_factory.mktemp("installed") / "Claude Extensions" / "danube-mcp"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(target)
    return target


def substitute(value: str, dirname: Path, user: dict[str, Any], home: Path) -> str:
    """Expand ``${...}`` as an MCPB host does: booleans as true/false, unknown names left alone."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "__dirname":
            return str(dirname)
        if name == "HOME":
            return str(home)
        if name in ("/", "pathSeparator"):
            return os.sep
        if name.startswith("user_config."):
            key = name.removeprefix("user_config.")
            if key in user:
                raw = user[key]
                return ("true" if raw else "false") if isinstance(raw, bool) else str(raw)
        return match.group(0)

    return re.sub(r"\$\{([^}]+)\}", one, value)


def start_like_a_host(unpacked: Path, overrides: dict[str, Any], home: Path) -> StdioPeer:
    """Run the bundle exactly as its manifest's mcp_config says, after the host's substitutions."""
    manifest = json.loads((unpacked / "manifest.json").read_text(encoding="utf-8"))
    config = dict(manifest["server"]["mcp_config"])
    config.update(config.pop("platform_overrides", {}).get(sys.platform, {}))
    user = {key: spec["default"] for key, spec in manifest["user_config"].items() if "default" in spec}
    user.update(overrides)
    command = shutil.which(config["command"])
    if command is None:
        require(None, f"the bundle's runtime {config['command']!r}")
    assert command is not None
    runtime = subprocess.run([command, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    wanted = manifest["compatibility"]["runtimes"]["python"]
    if not wanted.startswith(f">={runtime},"):
        require(None, f"{config['command']} {wanted} (found {runtime})")
    argv = [command] + [substitute(a, unpacked, user, home) for a in config.get("args", [])]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8"}
    env.update({k: substitute(v, unpacked, user, home) for k, v in config.get("env", {}).items()})
    return StdioPeer(argv, env, cwd=home)


@pytest.mark.packaging
def test_bundle_passes_the_official_validator(bundle: Path, unpacked: Path) -> None:
    mcpb = mcpb_cli()
    checked = subprocess.run(
        [mcpb, "validate", str(unpacked / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validation passes" in checked.stdout
    info = subprocess.run([mcpb, "info", str(bundle)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stdout + info.stderr


@pytest.mark.packaging
def test_bundle_manifest_and_contents(unpacked: Path) -> None:
    manifest = json.loads((unpacked / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["version"] == __version__
    assert manifest["server"]["type"] == "python"
    assert (unpacked / manifest["server"]["entry_point"]).is_file()
    assert (unpacked / manifest["icon"]).read_bytes() == (PACKAGING / "icon.png").read_bytes()
    assert (unpacked / "LICENSE").is_file()
    assert (unpacked / "server" / "lib" / "danube_mcp" / "__init__.py").is_file()
    assert (unpacked / "server" / "lib" / "mcp").is_dir()  # dependencies travel in the bundle
    assert manifest["repository"]["url"] == SERVER_JSON["repository"]["url"]
    assert "$comment" not in manifest


@pytest.mark.packaging
def test_bundle_runs_as_a_host_starts_it_and_stores_in_the_sandbox(unpacked: Path, tmp_path: Path) -> None:
    peer = start_like_a_host(unpacked, {"danube_api_key": API_KEY_CANARY, "sandbox": True}, tmp_path)
    try:
        init = peer.handshake()
        assert init["protocolVersion"] == PROTOCOL
        assert init["serverInfo"]["version"] == __version__
        tools = peer.request(2, "tools/list")["tools"]
        manifest = json.loads((unpacked / "manifest.json").read_text(encoding="utf-8"))
        assert [t["name"] for t in tools] == [t["name"] for t in manifest["tools"]] == [TOOL_NAME]
        result = peer.request(3, "tools/call", store_args())
        assert result["isError"] is False, result
        assert result["structuredContent"]["success"] is True
        assert result["structuredContent"]["sandbox"] is True
    finally:
        code = peer.close()
    assert code == 0, peer.stderr()[-2000:]
    assert_stdout_is_protocol(peer)
    assert_no_canary(b"".join(peer.stdout_lines).decode(), peer.stderr())
    # The sandbox database went where the server's default says, under the user's home.
    assert (tmp_path / ".local" / "share" / "danube-mcp" / "sandbox.db").is_file()


@pytest.mark.packaging
def test_bundle_without_a_key_says_which_setting_is_missing(unpacked: Path, tmp_path: Path) -> None:
    peer = start_like_a_host(unpacked, {"danube_api_key": "", "sandbox": False}, tmp_path)
    try:
        peer.handshake()
        result = peer.request(2, "tools/call", store_args())
    finally:
        peer.close()
    assert result["isError"] is True
    assert "DANUBE_API_KEY" in result["content"][0]["text"]
    assert_no_canary(json.dumps(result), peer.stderr())


# --------------------------------------------------------------------------------------------
# uvx from a checkout and from a built wheel


@pytest.mark.packaging
def test_uvx_from_a_checkout_runs_the_entry_point() -> None:
    uvx = uv_bin("uvx")
    done = subprocess.run(
        [uvx, "--from", str(REPO), "danube-mcp", "--version"],
        capture_output=True, text=True, env=uv_env(), cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"danube-mcp {__version__}"


@pytest.mark.packaging
def test_uvx_from_a_built_wheel_stores_in_the_sandbox(tmp_path: Path) -> None:
    uv, uvx = uv_bin("uv"), uv_bin("uvx")
    built = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, env=uv_env(), cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob(f"danube_mcp-{__version__}-py3-none-any.whl")
    env = uv_env() | {"DANUBE_API_KEY": API_KEY_CANARY}
    argv = [uvx, "--from", str(wheel), "danube-mcp", "--sandbox", "--sandbox-db", str(tmp_path / "s.db")]
    peer = StdioPeer(argv, env, cwd=tmp_path)
    try:
        assert peer.handshake()["serverInfo"]["version"] == __version__
        assert [t["name"] for t in peer.request(2, "tools/list")["tools"]] == [TOOL_NAME]
        result = peer.request(3, "tools/call", store_args())
        assert result["structuredContent"]["success"] is True
    finally:
        code = peer.close()
    assert code == 0, peer.stderr()[-2000:]
    assert_stdout_is_protocol(peer)
    assert_no_canary(b"".join(peer.stdout_lines).decode(), peer.stderr())


# --------------------------------------------------------------------------------------------
# The container image (podman; base image from debootstrap, see .ci/setup-packaging)


def podman_env() -> dict[str, str]:
    env = dict(os.environ)
    conf = CACHE / "containers.conf"  # this machine's runtime and ulimit settings, if any
    if conf.exists() and "CONTAINERS_CONF" not in env:
        env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout, check=False
    )
    if check:
        assert done.returncode == 0, f"podman {args[0]}: {done.stderr[-2000:]}"
    return done


def podman_run_once(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``podman run ARGS`` in a named container that is removed afterwards, even on a client timeout."""
    name = f"danube-mcp-test-{uuid.uuid4().hex[:8]}"
    try:
        return podman("run", "--name", name, *args, timeout=timeout, check=False)
    finally:
        podman("rm", "--force", "--time", "2", name, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(shutil.which("podman"), "podman")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        require(None, f"the base image {BASE_IMAGE}")
    context = tmp_path_factory.mktemp("image-context")
    shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
    shutil.copy(REPO / ".dockerignore", context / ".dockerignore")
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(context / "dist" / "wheelhouse"), f"{REPO}[redis]", "async-timeout>=4.0.3"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert wheels.returncode == 0, wheels.stderr[-2000:]
    (context / "stray.env").write_text(f"DANUBE_API_KEY={API_KEY_CANARY}\n")  # must not reach the image
    tag = f"localhost/danube-mcp:test-{uuid.uuid4().hex[:8]}"
    # --layers=false: no cached intermediate images are left behind by each run.
    podman("build", "--quiet", "--layers=false", "--format", "docker",
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, str(context), timeout=900)  # fmt: skip
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)


@pytest.mark.container
def test_image_metadata(image: str) -> None:
    (info,) = json.loads(podman("image", "inspect", image).stdout)
    config = info["Config"]
    assert config["Labels"]["io.modelcontextprotocol.server.name"] == SERVER_NAME
    assert config["User"] == "10001:10001"
    healthcheck = info.get("Healthcheck") or config.get("Healthcheck")  # podman: top level; docker: Config
    assert "/healthz" in " ".join(healthcheck["Test"])
    assert "DANUBE_MCP_TRANSPORT=streamable-http" in config["Env"]
    assert API_KEY_CANARY not in json.dumps(info)
    # Only dist/wheelhouse reaches the builder: the stray file beside it is in no layer.
    script = f"find / -xdev -name stray.env; grep -rl {API_KEY_CANARY} /opt /etc /tmp /home 2>/dev/null; true"
    found = podman_run_once("--entrypoint", "/bin/sh", image, "-c", script)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip() == ""


@pytest.mark.container
def test_image_refuses_a_public_bind_without_a_token(image: str) -> None:
    done = podman_run_once("--read-only", "-e", "DANUBE_MCP_ALLOWED_HOSTS=localhost",
                           "-e", f"DANUBE_API_KEY={API_KEY_CANARY}", image)  # fmt: skip
    assert done.returncode == 2
    ours = [line for line in done.stderr.splitlines() if line.startswith("danube-mcp:")]
    assert len(ours) == 1 and "no access token" in ours[0], done.stderr
    assert_no_canary(done.stdout, done.stderr)


@pytest.mark.container
def test_image_serves_http_read_only_with_a_token_file(image: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_CANARY + "\n")
    token_file.chmod(0o444)
    port = free_port()
    name = f"danube-mcp-test-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", "--name", name, "--read-only", "--health-interval=disable",
           "-p", f"127.0.0.1:{port}:8000",
           "-v", f"{token_file}:/run/secrets/danube_mcp_token:ro",
           "-e", "DANUBE_MCP_AUTH_TOKEN_FILE=/run/secrets/danube_mcp_token",
           "-e", "DANUBE_MCP_ALLOWED_HOSTS=localhost", "-e", "DANUBE_MCP_JSON_RESPONSE=true",
           "-e", "DANUBE_MCP_SANDBOX=true", "-e", "DANUBE_MCP_SANDBOX_DB=/tmp/danube-mcp/sandbox.db",
           "-e", f"DANUBE_API_KEY={API_KEY_CANARY}", image)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx2.Client(base_url=base, trust_env=False, timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                state = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
                assert state == "true", podman("logs", name, check=False).stderr[-2000:]
                assert time.monotonic() < deadline, "no /healthz answer within 60 s"
                time.sleep(0.2)  # polling a condition with a deadline
            assert podman("healthcheck", "run", name, check=False).returncode == 0

            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
            assert http.post("/mcp", json=init, headers=headers).status_code == 401
            headers["Authorization"] = f"Bearer {TOKEN_CANARY}"
            first = http.post("/mcp", json=init, headers=headers)
            assert first.status_code == 200, first.text
            assert first.json()["result"]["serverInfo"]["version"] == __version__
            headers["Mcp-Session-Id"] = first.headers["mcp-session-id"]
            headers["MCP-Protocol-Version"] = PROTOCOL
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert http.post("/mcp", json=note, headers=headers).status_code == 202
            listed = http.post(
                "/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers
            )
            assert [t["name"] for t in listed.json()["result"]["tools"]] == [TOOL_NAME]
            call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": store_args()}
            stored = http.post("/mcp", json=call, headers=headers).json()["result"]
            assert stored["structuredContent"]["success"] is True, stored
            texts = [first.text, listed.text, json.dumps(stored)]
    finally:
        logs = podman("logs", name, check=False)
        podman("rm", "--force", "--time", "5", name, check=False)
    assert_no_canary(*texts, logs.stdout, logs.stderr)


@pytest.mark.container
def test_image_can_share_state_with_other_replicas(image: str) -> None:
    """The [redis] extra is in the image, with async-timeout, which redis needs on the base image's
    Python 3.11.2 and which a wheelhouse made with a newer 3.11 leaves out."""
    done = podman_run_once("--read-only", "--entrypoint", "/opt/danube-mcp/bin/python", image,
                           "-c", "import redis.asyncio, async_timeout; print('ok')")  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
