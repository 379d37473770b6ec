"""Run every benchmark against one fake upstream, print one table (figure, ours, reference, ratio, target,
pass/fail) and write the JSON results to bench/results/. Targets are reported, never asserted."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

import cold_start
import hardening
import http_compare
import http_throughput
import memory
import overlap
import stdio_calls
from _common import (
    FASTMCP1_SCRIPT,
    FIGURE_HEADER,
    NUMERIC_COLUMNS,
    RESULTS,
    Json,
    add_common_args,
    exit_on_sigterm,
    figure_cells,
    loadavg,
    machine_busy_seconds,
    make_parser,
    own_cpu_seconds,
    print_rows,
    upstream,
)

SCRIPTS: dict[str, ModuleType] = {
    "cold_start": cold_start,
    "stdio_calls": stdio_calls,
    "http_throughput": http_throughput,
    "overlap": overlap,
    "memory": memory,
    "hardening": hardening,
    "http_compare": http_compare,
}
# Not in a plain run (it takes ~5 min): ask for it with --only http_compare (issue 16's table).
DEFAULT_SCRIPTS = [name for name in SCRIPTS if name != "http_compare"]


@dataclass(frozen=True)
class Target:
    script: str
    figure: str
    text: str
    check: Callable[[Json], bool]


def _ours(limit: float, op: str = "<=") -> Callable[[Json], bool]:
    ops: dict[str, Callable[[float, float], bool]] = {
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
    }
    return lambda f: ops[op](f["ours"], limit)


def _ratio(limit: float, op: str) -> Callable[[Json], bool]:
    return lambda f: f["ratio"] <= limit if op == "<=" else f["ratio"] >= limit


def _issue16(args: argparse.Namespace) -> list[Target]:
    """Issue 16's targets on bench/http_compare.py's figures (ours vs the bare low-level server)."""
    n = args.http_compare_clients
    modern = f"2026 stateless tools/call, {n} clients (json)"
    legacy = f"initialize-era, {n} sessions (default)"
    hc = "http_compare"
    return [
        Target(hc, f"calls/s, {modern}", ">= 2.5x", _ratio(2.5, ">=")),
        Target(hc, f"server CPU/call, {modern}", "<= 0.35x", _ratio(0.35, "<=")),
        Target(hc, f"p99, {modern}", "<= 0.5x", _ratio(0.5, "<=")),
        Target(hc, f"errors, {modern}", "0", _ours(0, "==")),
        Target(hc, f"calls/s, {legacy}", ">= 1.5x", _ratio(1.5, ">=")),
        Target(hc, f"errors, {legacy}", "0", _ours(0, "==")),
        Target(hc, f"ratio kept under load, calls/s, {modern}", ">= 0.8 (falls <= 1/5)", _ratio(0.8, ">=")),
        Target(hc, f"ratio kept under load, CPU/call, {modern}", ">= 0.8 (falls <= 1/5)", _ratio(0.8, ">=")),
        Target(hc, f"ratio kept under load, calls/s, {legacy}", ">= 0.8 (falls <= 1/5)", _ratio(0.8, ">=")),
        Target(hc, f"errors under CPU load, {modern}", "0", _ours(0, "==")),
        Target(
            hc,
            f"2 uvicorn workers vs 1, calls/s, 2026 stateless JSON, {n} clients",
            ">= 1.6x",
            _ratio(1.6, ">="),
        ),
        Target(hc, "HTTP idle RSS (stateless JSON)", "<= 1.0x", _ratio(1.0, "<=")),
        Target(hc, f"HTTP RSS growth over {args.memory_calls} calls", "< 1 MiB", _ours(1.0, "<")),
        Target(hc, "stderr bytes per call, HTTP (json)", "0 B", _ours(0, "==")),
        Target(hc, "stderr bytes per call, HTTP (default)", "0 B", _ours(0, "==")),
    ]


def targets(args: argparse.Namespace) -> list[Target]:
    return [
        Target("cold_start", "cold start -> initialize", "<= 0.8x", _ratio(0.8, "<=")),
        Target("cold_start", "cold start -> initialize vs FastMCP 1.x", "<= 1.0x", _ratio(1.0, "<=")),
        Target("cold_start", "exit after stdin EOF", "< 60 ms", _ours(60, "<")),
        Target("stdio_calls", "server CPU per stdio call", "<= 0.3x", _ratio(0.3, "<=")),
        Target("stdio_calls", "p50 overhead above direct POST", "<= 1.0 ms", _ours(1.0)),
        Target("stdio_calls", "stderr bytes per ok call", "0 B", _ours(0, "==")),
        Target("stdio_calls", "failed calls", "0", _ours(0, "==")),
        Target("http_throughput", "HTTP calls/s, 32 sessions", ">= 1.5x", _ratio(1.5, ">=")),
        Target("http_throughput", "HTTP errors, 32 sessions", "0", _ours(0, "==")),
        Target("overlap", "HTTP new upstream conns per warm burst", "0", _ours(0, "==")),
        Target("overlap", "stdio new upstream conns per warm burst", "0", _ours(0, "==")),
        Target("overlap", "HTTP burst wall / serial bound", "<= 0.25x (ours)", _ours(0.25)),
        Target("overlap", "HTTP failed calls in bursts", "0", _ours(0, "==")),
        Target("memory", "idle RSS", "<= 1.05x", _ratio(1.05, "<=")),
        Target("memory", f"RSS growth over {args.memory_calls} calls", "< 1 MiB", _ours(1.0, "<")),
        Target("memory", "failed calls", "0", _ours(0, "==")),
        Target(
            "hardening",
            "/healthz p99, 8 clients sending worst-case bodies (ref: idle)",
            "< 50 ms",
            _ours(50, "<"),
        ),
        Target("hardening", "/healthz failures under worst-case bodies", "0", _ours(0, "==")),
        Target(
            "hardening",
            f"sessions opened by {args.hardening_flood} initialize (no key)",
            "<= 100 (per caller)",
            _ours(100),
        ),
        Target(
            "hardening",
            f"sessions opened by {args.hardening_flood} initialize (a new key each)",
            "<= 1000 (in all)",
            _ours(1000),
        ),
        Target(
            "hardening",
            f"drip connections held of {args.hardening_cap + 200} (cap {args.hardening_cap})",
            f"<= {args.hardening_cap}",
            _ours(args.hardening_cap),
        ),
        Target("hardening", "/healthz 200 again after the drips leave", "< 1000 ms", _ours(1000, "<")),
        *_issue16(args),
    ]


def script_argv(name: str, args: argparse.Namespace) -> list[str]:
    sizes: dict[str, list[str]] = {
        "cold_start": ["--rounds", str(args.cold_rounds), "--importtime-runs", str(args.importtime_runs)],
        "stdio_calls": ["--calls", str(args.stdio_calls), "--rounds", str(args.stdio_rounds)],
        "http_throughput": ["--duration", str(args.http_duration), "--rounds", str(args.http_rounds)],
        "overlap": ["--rounds", str(args.overlap_rounds)],
        "memory": ["--calls", str(args.memory_calls)],
        "hardening": [
            "--flood",
            str(args.hardening_flood),
            "--probe-seconds",
            str(args.hardening_seconds),
            "--cap",
            str(args.hardening_cap),
        ],
        "http_compare": [
            "--duration", str(args.http_compare_duration),
            "--rounds", str(args.http_compare_rounds),
            "--clients", str(args.http_compare_clients),
            "--memory-calls", str(args.memory_calls),
            *(["--baseline-src", args.http_compare_baseline] if args.http_compare_baseline else []),
        ],
    }  # fmt: skip
    return sizes[name]


HEADER = ["script", "figure", *FIGURE_HEADER, "target", "result"]


def table(results: dict[str, Json], args: argparse.Namespace) -> list[list[str]]:
    by_key = {(t.script, t.figure): t for t in targets(args)}
    rows = []
    for script, result in results.items():
        if "error" in result:
            rows.append([script, "FAILED TO RUN", *[""] * len(FIGURE_HEADER), "", "ERROR"])
            continue
        if "skipped" in result:
            rows.append([script, f"skipped: {result['skipped']}", *[""] * len(FIGURE_HEADER), "", ""])
            continue
        for name, f in result["figures"].items():
            t = by_key.get((script, name))
            verdict = ""
            if t is not None:
                try:
                    verdict = "pass" if t.check(f) else "FAIL"
                except (TypeError, KeyError):
                    verdict = "?"
            rows.append([script, name, *figure_cells(f), t.text if t else "", verdict])
    return rows


def finite(obj: object) -> object:
    """JSON-safe copy: NaN and infinities become null."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def environment(fastmcp1_python: str | None) -> Json:
    """Versions, and the load average when the run starts."""
    info: Json = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}
    for pkg in ("mcp", "httpx2", "uvicorn", "starlette", "pydantic", "anyio"):
        with contextlib.suppress(PackageNotFoundError):
            info[pkg] = version(pkg)
    info["loadavg_start"] = loadavg()
    if fastmcp1_python:
        probe = "import importlib.metadata as m, sys; print(sys.version.split()[0], m.version('mcp'), m.version('httpx'))"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([fastmcp1_python, "-c", probe], capture_output=True, text=True, timeout=30)
            info["fastmcp1"] = dict(zip(("python", "mcp", "httpx"), out.stdout.split(), strict=False))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_args(parser)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(SCRIPTS),
        default=DEFAULT_SCRIPTS,
        help="scripts to run (default: all but http_compare; issue 16's table: --only http_compare)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run of the harness (~1 min)"
    )
    parser.add_argument("--cold-rounds", type=int, default=10)
    parser.add_argument("--importtime-runs", type=int, default=3)
    parser.add_argument("--stdio-calls", type=int, default=2000)
    parser.add_argument("--stdio-rounds", type=int, default=6)
    parser.add_argument("--http-duration", type=float, default=2.5)
    parser.add_argument("--http-rounds", type=int, default=3)
    parser.add_argument("--overlap-rounds", type=int, default=6)
    parser.add_argument("--memory-calls", type=int, default=10_000)
    parser.add_argument("--hardening-flood", type=int, default=10_000, help="initialize requests per flood")
    parser.add_argument("--hardening-seconds", type=float, default=5.0, help="/healthz probing, each side")
    parser.add_argument("--hardening-cap", type=int, default=2000, help="--max-connections of the cap phase")
    parser.add_argument("--http-compare-duration", type=float, default=1.5, help="s per http_compare phase")
    parser.add_argument("--http-compare-rounds", type=int, default=3)
    parser.add_argument("--http-compare-clients", type=int, default=32)
    parser.add_argument(
        "--http-compare-baseline",
        default=None,
        metavar="DIR",
        help="http_compare also runs the server from DIR/src (e.g. `git archive REV src | tar -x -C DIR`)",
    )
    parser.add_argument("--out", default=None, help="JSON file (default: bench/results/run-<time>.json)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    if args.quick:
        args.cold_rounds, args.importtime_runs, args.stdio_calls, args.stdio_rounds = 4, 1, 400, 2
        args.http_duration, args.http_rounds, args.overlap_rounds, args.memory_calls = 1.0, 1, 2, 1000
        args.hardening_flood, args.hardening_seconds, args.hardening_cap = 2000, 2.0, 300
        args.http_compare_duration, args.http_compare_rounds = 0.7, 1

    common = ["--server", args.server, "--reference", args.reference, "--http-args", args.http_args]
    if args.fastmcp1_python:
        common += ["--fastmcp1-python", args.fastmcp1_python]
    common += ["--http-path", args.http_path]
    for e in args.env:
        common += ["--env", e]
    for h in args.header:
        common += ["--header", h]

    env_info = environment(args.fastmcp1_python)
    results: dict[str, Json] = {}
    loads: dict[str, tuple[float, float]] = {}
    started = time.time()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    with upstream(args.upstream) as up:
        common += ["--upstream", up.url]
        for name in args.only:
            module = SCRIPTS[name]
            sub = make_parser(module.TITLE, module.add_args).parse_args(common + script_argv(name, args))
            print(f"[{time.time() - started:6.1f}s] {name} ...", file=sys.stderr, flush=True)
            load0 = loadavg()
            try:
                results[name] = module.run(sub)
            except Exception as exc:
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            loads[name] = (load0[0], loadavg()[0])
    elapsed = time.time() - started
    foreign = max(0.0, (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0))

    fm1_versions = " ".join(f"{k} {v}" for k, v in env_info.get("fastmcp1", {}).items())
    ref_fm1 = (
        f"\nFastMCP 1.x: {args.fastmcp1_python} {FASTMCP1_SCRIPT.name} ({fm1_versions})"
        if args.fastmcp1_python
        else ""
    )
    print(
        f"\nours: {args.server}\nref:  {args.reference}{ref_fm1}\n"
        "(ratio = ours / ref, median of per-round pairs where paired)\n"
    )
    print(
        "load average (1 min) before -> after each script: "
        + ", ".join(f"{k} {a:.2f} -> {b:.2f}" for k, (a, b) in loads.items())
        + f"; {os.cpu_count()} CPUs\n"
    )
    if foreign > 0.05 * elapsed:
        print(
            f"WARNING: other processes used {foreign:.1f} CPU-s during this {elapsed:.0f} s run "
            f"({100 * foreign / elapsed:.0f}% of one core): figures are noisy, rerun on a quiet machine.\n"
        )
    rows = table(results, args)
    print_rows(HEADER, rows, NUMERIC_COLUMNS)
    hc = results.get("http_compare", {})
    if "throughput" in hc:
        print(
            "\nhttp_compare rounds, 1-min load average at start -> end: "
            + ", ".join(
                f"{r['round']}: {r['loadavg_start'][0]:.2f} -> {r['loadavg_end'][0]:.2f}"
                for r in hc["throughput"]["rounds"]
            )
            + f"; CPUs pinned: {hc.get('pinned')}"
        )
    if "cold_start" in results and "imports" in results["cold_start"]:
        cold_start.print_imports(results["cold_start"])

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or str(RESULTS / f"run-{time.strftime('%Y%m%d-%H%M%S')}.json")
    payload = {
        "command": shlex.join(sys.argv),
        "ours": args.server,
        "ref": args.reference,
        "elapsed_s": elapsed,
        "foreign_cpu_s": foreign,
        "loadavg_1min_per_script": loads,
        "environment": env_info,
        "table": [dict(zip(HEADER, r, strict=True)) for r in rows],
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(finite(payload), f, indent=2, default=str)
    print(f"\nwrote {out} ({elapsed:.0f} s)")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
