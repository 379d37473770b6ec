"""Cold start over stdio: spawn -> initialize answer, spawn -> tools/list answer, exit time after stdin EOF,
and an import-time breakdown (``python -X importtime``) of each server.

Sides: ours, the reference (default: the bare mcp 2.x low-level server) and, with ``--fastmcp1-python``,
a bare mcp 1.x FastMCP server run by that interpreter; the starts are interleaved, every round in another
order of the sides."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

from _common import (
    INITIALIZED_MSG,
    Json,
    StdioClient,
    call_msg,
    fastmcp1_from_args,
    figure,
    initialize_msg,
    median,
    paired_figure,
    rotations,
    run_script,
    server_env,
    servers_from_args,
    spawn,
    upstream,
)

TITLE = "cold start (stdio)"
EXIT_TIMEOUT = 5.0


def one_start(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(spawn->initialize, spawn->tools/list, stdin EOF->exit), seconds. Client writes raw lines at once."""
    child = spawn(argv, env)
    try:
        client = StdioClient(child)
        client.send(initialize_msg(1))
        client.wait_response(1, 60)
        t_init = time.perf_counter() - child.started
        client.send(INITIALIZED_MSG)
        client.send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        client.wait_response(2, 60)
        t_list = time.perf_counter() - child.started
        assert child.proc.stdin is not None
        t_eof = time.perf_counter()
        child.proc.stdin.close()
        t_exit = time.perf_counter() - t_eof if child.wait_exit(EXIT_TIMEOUT) else float("inf")
        return t_init, t_list, t_exit
    finally:
        child.close()


def parse_importtime(stderr: str) -> tuple[dict[str, float], float, int]:
    """Top-level modules' cumulative import time (ms), the sum of self times (ms) and the module count."""
    top: dict[str, float] = {}
    total_us = 0
    count = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3:
            continue
        self_us, cum_us, name = int(parts[0]), int(parts[1]), parts[2]
        total_us += self_us
        count += 1
        if len(name) - len(name.lstrip(" ")) == 1:  # nesting adds two spaces per level
            top[name.strip()] = top.get(name.strip(), 0.0) + cum_us / 1000.0
    return top, total_us / 1000.0, count


def importtime(argv: list[str], env: dict[str, str]) -> tuple[dict[str, float], float, int]:
    """Run the server under ``-X importtime`` through initialize, tools/list and one call, then EOF."""
    child = spawn([argv[0], "-X", "importtime", *argv[1:]], env)
    try:
        client = StdioClient(child)
        client.initialize()
        client.tools_list()
        client.request(call_msg(client.next_id()))
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        child.proc.wait(EXIT_TIMEOUT)
        return parse_importtime(child.stderr_text(limit=1 << 24))
    finally:
        child.close()


def run(args: argparse.Namespace) -> Json:
    servers = servers_from_args(args)
    fm1 = fastmcp1_from_args(args)
    if fm1 is not None:
        servers["fastmcp1"] = fm1
    samples: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in [*servers, "ours-first"]}
    imports: dict[str, Json] = {}
    with upstream(args.upstream) as up, tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        # danube-mcp's fast start keeps a snapshot of its handshake answers in a cache folder; the
        # warm-up start records it (as the first start after an install does). The other sides
        # ignore the variable.
        env = server_env(up.url, [f"DANUBE_MCP_CACHE_DIR={cache}", *args.env])
        for cmd in servers.values():  # warm-up: pyc files, page cache, the fast-start cache
            one_start(list(cmd.argv), env)
        first_sides = [*servers, "ours-first"] if args.first_start else list(servers)
        for n, order in enumerate(rotations(first_sides, args.rounds)):
            for side in order:
                if side == "ours-first":
                    # The first start after an install: no snapshot yet (a fresh, empty cache folder).
                    first_env = {**env, "DANUBE_MCP_CACHE_DIR": os.path.join(cache, f"first-{n}")}
                    t_init, t_list, t_exit = one_start(list(servers["ours"].argv), first_env)
                else:
                    t_init, t_list, t_exit = one_start(list(servers[side].argv), env)
                samples[side]["init"].append(t_init * 1000)
                samples[side]["list"].append(t_list * 1000)
                samples[side]["exit"].append(t_exit * 1000)
        for side, cmd in servers.items():
            if not cmd.is_python or args.importtime_runs <= 0:
                continue
            runs = [importtime(list(cmd.argv), env) for _ in range(args.importtime_runs)]
            per_mod: dict[str, list[float]] = defaultdict(list)
            for top, _, _ in runs:
                for mod, ms in top.items():
                    per_mod[mod].append(ms)
            ranked = sorted(((median(v), k) for k, v in per_mod.items()), reverse=True)[: args.top]
            imports[side] = {
                "total_self_ms": median([r[1] for r in runs]),
                "modules": median([r[2] for r in runs]),
                "top_cumulative_ms": {k: ms for ms, k in ranked},
            }
    o, r = samples["ours"], samples["ref"]
    figures = {
        "cold start -> initialize": paired_figure(o["init"], r["init"], "ms"),
        "cold start -> tools/list": paired_figure(o["list"], r["list"], "ms"),
        "exit after stdin EOF": paired_figure(o["exit"], r["exit"], "ms"),
    }
    if samples["ours-first"]["init"]:
        first = samples["ours-first"]
        figures["first start after install -> initialize"] = paired_figure(first["init"], r["init"], "ms")
        # With a warm cache the EOF above comes while the SDK may still be loading (nothing waits
        # for it); on a first start the SDK serves, so this is the exit of a loaded server.
        figures["exit after stdin EOF, first start"] = paired_figure(first["exit"], r["exit"], "ms")
    if "fastmcp1" in servers:
        f = samples["fastmcp1"]
        figures["cold start -> initialize vs FastMCP 1.x"] = paired_figure(o["init"], f["init"], "ms")
        figures["cold start -> tools/list vs FastMCP 1.x"] = paired_figure(o["list"], f["list"], "ms")
        figures["exit after stdin EOF vs FastMCP 1.x"] = paired_figure(o["exit"], f["exit"], "ms")
    if "ours" in imports and "ref" in imports:
        a, b = imports["ours"]["total_self_ms"], imports["ref"]["total_self_ms"]
        figures["import time (sum of self)"] = figure(a, b, "ms")
        figures["modules imported"] = figure(imports["ours"]["modules"], imports["ref"]["modules"], "count")
    if "ours" in imports and "fastmcp1" in imports:
        a, b = imports["ours"]["total_self_ms"], imports["fastmcp1"]["total_self_ms"]
        figures["import time (sum of self) vs FastMCP 1.x"] = figure(a, b, "ms")
        figures["modules imported vs FastMCP 1.x"] = figure(
            imports["ours"]["modules"], imports["fastmcp1"]["modules"], "count"
        )
    return {"figures": figures, "samples": {s: dict(v) for s, v in samples.items()}, "imports": imports}


def print_imports(result: Json) -> None:
    for side, data in result.get("imports", {}).items():
        print(f"\n-- {side}: top-level imports by cumulative time (ms, median of runs)")
        for mod, ms in data["top_cumulative_ms"].items():
            print(f"  {ms:8.1f}  {mod}")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=10, help="starts per server (interleaved)")
    parser.add_argument(
        "--importtime-runs", type=int, default=3, help="-X importtime runs per server (0: skip)"
    )
    parser.add_argument("--top", type=int, default=12, help="how many top-level modules to list")
    parser.add_argument(
        "--no-first-start",
        dest="first_start",
        action="store_false",
        help="skip the starts of ours with an empty fast-start cache (the first start after an install)",
    )


def main(argv: list[str] | None = None) -> int:
    def run_and_print(args: argparse.Namespace) -> Json:
        result = run(args)
        print_imports(result)
        return result

    return run_script(TITLE, add_args, run_and_print, argv)


if __name__ == "__main__":
    raise SystemExit(main())
