"""Streamable-HTTP throughput with 1, 8 and 32 concurrent MCP sessions (raw HTTP/1.1 client, one keep-alive
connection per session): calls/s, p50/p99, errors, server CPU per call and new upstream connections after
warm-up."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence

from _common import (
    HttpServer,
    Json,
    McpHttpSession,
    Upstream,
    abba,
    close_sessions,
    cpu_seconds,
    figure,
    headers_from_args,
    http_server,
    median,
    paired_figure,
    pct,
    run_script,
    server_env,
    servers_from_args,
    upstream,
    wait_idle,
)

TITLE = "streamable-HTTP throughput"


async def worker(session: McpHttpSession, deadline: float, lat: list[float], errors: list[str]) -> None:
    pc = time.perf_counter
    while pc() < deadline:
        t0 = pc()
        try:
            ok = await session.call()
        except Exception as exc:  # count and go on with a fresh connection
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            await session.conn.close()
            continue
        if ok:
            lat.append(pc() - t0)
        else:
            errors.append("tool result isError or malformed")


async def phase(
    server: HttpServer,
    up: Upstream,
    concurrency: int,
    duration: float,
    warmup: int,
    headers: Sequence[tuple[str, str]],
) -> Json:
    """Open `concurrency` sessions, warm up, then run all of them flat out for `duration` seconds."""
    sessions = await server.open_sessions(concurrency, headers)
    try:
        for _ in range(warmup):
            await asyncio.gather(*(s.call() for s in sessions))
        up.reset()
        lat: list[float] = []
        errors: list[str] = []
        pid = server.child.pid
        cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(s, t0 + duration, lat, errors) for s in sessions))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        own = time.process_time() - own0
        stats = up.stats()
    finally:
        await close_sessions(sessions)
    return {
        "calls": len(lat),
        "calls_per_s": len(lat) / elapsed,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "cpu_per_call_ms": cpu / max(len(lat), 1) * 1000,
        "client_cpu_per_call_ms": own / max(len(lat), 1) * 1000,
        "new_upstream_connections": stats["connections"],
        "upstream_requests": stats["requests"],
    }


async def measure(
    args: argparse.Namespace, servers: dict[str, HttpServer], up: Upstream
) -> dict[int, dict[str, list[Json]]]:
    out: dict[int, dict[str, list[Json]]] = {}
    headers = headers_from_args(args)
    for c in args.concurrency:
        out[c] = defaultdict(list)
        for order in abba(args.rounds):
            for side in order:
                await asyncio.to_thread(wait_idle, [s.child.pid for s in servers.values()])
                out[c][side].append(await phase(servers[side], up, c, args.duration, args.warmup, headers))
    return out


def summarise(per_c: dict[int, dict[str, list[Json]]]) -> dict[str, Json]:
    figures: dict[str, Json] = {}
    for c, sides in per_c.items():
        o, r = sides["ours"], sides["ref"]

        def col(rows: list[Json], key: str) -> list[float]:
            return [float(x[key]) for x in rows]

        cps_o, cps_r = col(o, "calls_per_s"), col(r, "calls_per_s")
        cpu_o, cpu_r = col(o, "cpu_per_call_ms"), col(r, "cpu_per_call_ms")
        figures[f"HTTP calls/s, {c} sessions"] = paired_figure(cps_o, cps_r, "1/s")
        figures[f"HTTP p50, {c} sessions"] = figure(median(col(o, "p50_ms")), median(col(r, "p50_ms")), "ms")
        figures[f"HTTP p99, {c} sessions"] = figure(median(col(o, "p99_ms")), median(col(r, "p99_ms")), "ms")
        figures[f"HTTP server CPU per call, {c} sessions"] = paired_figure(cpu_o, cpu_r, "ms")
        figures[f"bench client CPU per call, {c} sessions"] = figure(
            median(col(o, "client_cpu_per_call_ms")),
            median(col(r, "client_cpu_per_call_ms")),
            "ms",
            float("nan"),
        )
        figures[f"HTTP errors, {c} sessions"] = figure(
            sum(col(o, "errors")), sum(col(r, "errors")), "count", float("nan")
        )
        figures[f"new upstream conns after warm-up, {c} sessions"] = figure(
            max(col(o, "new_upstream_connections")),
            max(col(r, "new_upstream_connections")),
            "max",
            float("nan"),
        )
    return figures


def run(args: argparse.Namespace) -> Json:
    cmds = servers_from_args(args)
    with upstream(args.upstream) as up:
        env = server_env(up.url, args.env)
        with http_server(cmds["ours"], env) as a, http_server(cmds["ref"], env) as b:
            per_c = asyncio.run(measure(args, {"ours": a, "ref": b}, up))
    return {"figures": summarise(per_c), "phases": {str(c): dict(v) for c, v in per_c.items()}}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="sessions per phase")
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved phases per server and concurrency")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured calls per session first")


def main(argv: list[str] | None = None) -> int:
    return run_script(TITLE, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
