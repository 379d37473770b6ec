"""Overlap: 32 concurrent calls against an upstream that answers after 50 ms. Wall time per burst vs the
serial bound (50 ms x 32), over streamable HTTP (32 sessions) and over stdio (32 requests in flight on one
session); new upstream connections per burst once the pool is warm."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict

from _common import (
    HttpServer,
    Json,
    McpHttpSession,
    StdioClient,
    Upstream,
    abba,
    call_ok,
    close_sessions,
    figure,
    headers_from_args,
    http_server,
    median,
    paired_figure,
    run_script,
    server_env,
    servers_from_args,
    stdio_server,
    upstream,
    wait_idle,
)

TITLE = "overlap (32 concurrent calls, upstream delay)"


def burst_result(wall: float, ok: int, up: Upstream) -> Json:
    stats = up.stats()
    return {"wall_ms": wall * 1000, "ok": ok, "new_upstream_connections": stats["connections"]}


async def http_bursts(
    args: argparse.Namespace, servers: dict[str, HttpServer], up: Upstream
) -> dict[str, list[Json]]:
    headers = headers_from_args(args)
    sessions: dict[str, list[McpHttpSession]] = {}
    out: dict[str, list[Json]] = defaultdict(list)
    try:
        for side, server in servers.items():
            sessions[side] = await server.open_sessions(args.concurrency, headers)
        for _ in range(args.warmup):  # lets each server's upstream pool grow to the burst size
            for side in servers:
                await asyncio.gather(*(s.call() for s in sessions[side]))
        pids = [s.child.pid for s in servers.values()]
        for order in abba(args.rounds):
            for side in order:
                await asyncio.to_thread(wait_idle, pids)
                up.reset()
                t0 = time.perf_counter()
                oks = await asyncio.gather(*(s.call() for s in sessions[side]), return_exceptions=True)
                wall = time.perf_counter() - t0
                out[side].append(burst_result(wall, sum(x is True for x in oks), up))
    finally:
        for ss in sessions.values():
            await close_sessions(ss)
    return out


def stdio_bursts(
    args: argparse.Namespace, clients: dict[str, StdioClient], up: Upstream
) -> dict[str, list[Json]]:
    out: dict[str, list[Json]] = defaultdict(list)
    for _ in range(args.warmup):
        for c in clients.values():
            c.call_many(args.concurrency)
    pids = [c.child.pid for c in clients.values()]
    for order in abba(args.rounds):
        for side in order:
            wait_idle(pids)
            up.reset()
            t0 = time.perf_counter()
            answers = clients[side].call_many(args.concurrency)
            wall = time.perf_counter() - t0
            out[side].append(burst_result(wall, sum(call_ok(m) for m in answers), up))
    return out


def summarise(transport: str, per_side: dict[str, list[Json]], n: int, serial_ms: float) -> dict[str, Json]:
    def col(side: str, key: str) -> list[float]:
        return [float(x[key]) for x in per_side[side]]

    wall_o, wall_r = col("ours", "wall_ms"), col("ref", "wall_ms")
    fail = {s: len(per_side[s]) * n - sum(col(s, "ok")) for s in ("ours", "ref")}
    return {
        f"{transport} burst wall ({n} x {serial_ms / n:g} ms)": paired_figure(
            wall_o, wall_r, "ms", serial_ms=serial_ms
        ),
        f"{transport} burst wall / serial bound": figure(
            median(wall_o) / serial_ms, median(wall_r) / serial_ms, "x"
        ),
        f"{transport} new upstream conns per warm burst": figure(
            max(col("ours", "new_upstream_connections")),
            max(col("ref", "new_upstream_connections")),
            "max",
            float("nan"),
        ),
        f"{transport} failed calls in bursts": figure(fail["ours"], fail["ref"], "count", float("nan")),
    }


def run(args: argparse.Namespace) -> Json:
    cmds = servers_from_args(args)
    serial_ms = args.delay_ms * args.concurrency
    figures: dict[str, Json] = {}
    raw: dict[str, Json] = {}
    with upstream(args.upstream) as up:
        env = server_env(up.url, args.env)
        up.set_delay(args.delay_ms)
        try:
            if "http" in args.transports:
                with http_server(cmds["ours"], env) as a, http_server(cmds["ref"], env) as b:
                    per_side = asyncio.run(http_bursts(args, {"ours": a, "ref": b}, up))
                figures |= summarise("HTTP", per_side, args.concurrency, serial_ms)
                raw["http"] = dict(per_side)
            if "stdio" in args.transports:
                with stdio_server(cmds["ours"], env) as a, stdio_server(cmds["ref"], env) as b:
                    per_side = stdio_bursts(args, {"ours": a, "ref": b}, up)
                figures |= summarise("stdio", per_side, args.concurrency, serial_ms)
                raw["stdio"] = dict(per_side)
        finally:
            if args.upstream:  # a shared upstream goes back to no delay
                up.set_delay(0)
    return {"figures": figures, "bursts": raw, "serial_ms": serial_ms}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per burst")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="upstream delay per request")
    parser.add_argument("--rounds", type=int, default=6, help="measured bursts per server (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured bursts per server first")
    parser.add_argument("--transports", nargs="+", choices=["http", "stdio"], default=["http", "stdio"])


def main(argv: list[str] | None = None) -> int:
    return run_script(TITLE, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
