"""The command line from the outside (``python -m danube_mcp``): help and version on stdout with
exit 0, every flag naming its environment variable, one-line errors with exit 2, and no value
from the command line ever repeated in an error (a mistyped flag often carries a secret)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from danube_mcp import __version__
from procs import REPO, child_env

CANARY = "dk-CANARY-cli-5f1e2d3c4b5a69788796"


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


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("danube-mcp: ")
    return lines[0]


def test_help_goes_to_stdout_and_reads_like_a_cli() -> None:
    out = run("--help")
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    assert text.startswith("usage: danube-mcp [options]")
    for section in (
        "commands",
        "Danube settings (environment only):",
        "server:",
        "HTTP transports",
        "HTTP security:",
    ):
        assert section in text
    for command in ("login", "logout", "store"):
        assert re.search(rf"^  {command} ", text, re.M), command
    examples = text.split("examples:", 1)[1]
    assert examples.count("  danube-mcp ") + examples.count("danube-mcp --self-test") >= 2
    assert "danube-mcp --self-test --sandbox" in examples
    assert max(len(line) for line in text.splitlines()) <= 80


def test_every_flag_names_its_environment_variable() -> None:
    """Parsed from the help a user reads, not from the parser object."""
    text = run("--help").stdout.split("server:", 1)[1].split("examples:", 1)[0]
    # One entry per flag: the option line plus its indented continuation lines.
    entries = re.split(r"\n(?=  --)", text)
    flags = {}
    for entry in entries:
        m = re.match(r"\s*(--[a-z-]+)", entry)
        if m:
            flags[m.group(1)] = " ".join(entry.split())
    assert len(flags) >= 14, flags.keys()
    for flag, body in flags.items():
        if flag == "--self-test":
            assert "no environment variable" in body
            continue
        assert re.search(r"env DANUBE_MCP_[A-Z_]+", body), flag


def test_version_goes_to_stdout() -> None:
    out = run("--version")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"danube-mcp {__version__}\n", "")


def test_sandbox_db_without_sandbox_is_an_error(tmp_path: object) -> None:
    line = one_line_error(run("--sandbox-db", "/tmp/x.db"))
    assert "--sandbox-db needs --sandbox" in line


def test_sandbox_db_with_sandbox_from_the_environment_is_fine(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = run("--sandbox-db", str(blocker / "x.db"), DANUBE_MCP_SANDBOX="1")
    # Gets past the flag rule and fails on the folder instead (one line, exit 2).
    assert "needs --sandbox" not in out.stderr and "sandbox" in one_line_error(out)


@pytest.mark.parametrize("value", ["99999", "-1", "eighty", "８０８０", ""])
def test_bad_port_says_the_valid_range(value: str) -> None:
    line = one_line_error(run("--transport", "streamable-http", "--port", value))
    assert "--port must be a whole number from 0 to 65535" in line
    assert "_port" not in line and "invalid" not in line


def test_bad_transport_lists_the_choices() -> None:
    line = one_line_error(run("--transport", CANARY))
    assert "--transport must be one of stdio, streamable-http, sse, http" in line
    assert CANARY not in line


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ((f"--api-key={CANARY}",), "--api-key"),
        (("--api-key", CANARY), "--api-key"),
        (("--token", CANARY), "--token"),
        ((f"--token={CANARY}",), "--token"),
        (("--sandbox", f"--danube-api-key={CANARY}"), "--danube-api-key"),
        ((f"--sandbox-d={CANARY}",), "--sandbox-d"),  # abbreviations are not accepted
        ((f"--auth={CANARY}",), "--auth"),  # would be ambiguous: argparse quotes it whole
        ((f"--a={CANARY}",), "--a"),
        ((f"--{CANARY}",), None),  # a pasted key that starts with dashes is not repeated either
        ((f"-k{CANARY}",), None),
        (("--sk-proj-4f3e2d1c0b9a",), None),  # lowercase, but digits: not a flag of ours
        ((CANARY,), None),  # a stray positional
        ((f"--sandbox={CANARY}",), "--sandbox"),  # a switch given a value
        ((f"--self-test={CANARY}",), "--self-test"),
        ((f"--version={CANARY}",), "--version"),
        ((f"--port={CANARY}",), "--port"),
        (("--port", CANARY), "--port"),
        ((f"--transport={CANARY}",), "--transport"),
        ((f"--log-level={CANARY}",), "--log-level"),
    ],
)
def test_a_mistyped_flag_never_echoes_its_value(argv: tuple[str, ...], named: str | None) -> None:
    out = run(*argv)
    line = one_line_error(out)
    for fragment in (CANARY, CANARY[3:], CANARY[-12:], "4f3e2d1c0b9a"):
        assert fragment not in out.stderr + out.stdout
    if named is not None:
        assert named in line


def test_unknown_flag_suggests_the_near_one() -> None:
    line = one_line_error(run("--prot", "8000"))
    assert "unknown option --prot (did you mean --port?)" in line


def test_config_errors_are_one_line_naming_the_variable() -> None:
    line = one_line_error(run(DANUBE_API_URL="https://api.danubeai.com/v1"))
    assert line == (
        "danube-mcp: DANUBE_API_URL must be the API's base address without a path (the server adds "
        "/v1/credentials/store itself): set DANUBE_API_URL=https://api.danubeai.com"
    )


@pytest.mark.parametrize("name", ["login", "logout", "store"])
def test_subcommands_go_to_the_commands_module(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main hands ``login``/``logout``/``store`` and their own arguments to
    danube_mcp.commands.dispatch before its parser sees them (their flags are not its flags)."""
    import danube_mcp.commands
    import danube_mcp.hardening
    from danube_mcp.cli import main

    calls: list[tuple[str, list[str]]] = []

    def fake_dispatch(command: str, argv: list[str]) -> int:
        calls.append((command, argv))
        return 7

    monkeypatch.setattr(danube_mcp.commands, "dispatch", fake_dispatch)
    monkeypatch.setattr(danube_mcp.hardening, "disable_core_dumps", lambda: None)
    assert main([name, "--org", "org_1", "--whatever"]) == 7
    assert calls == [(name, ["--org", "org_1", "--whatever"])]


def test_subcommand_help_is_not_the_servers() -> None:
    out = run("login", "--help")
    assert "unknown option" not in out.stderr
    assert "usage: danube-mcp [options]" not in out.stdout


def test_a_flag_without_its_value() -> None:
    assert "--port needs a value" in one_line_error(run("--transport", "sse", "--port"))
