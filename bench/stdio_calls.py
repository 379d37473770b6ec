"""Sequential tools/call over stdio: p50/p99 latency, p50 overhead above a direct POST to the same upstream,
server CPU per call (/proc utime+stime) and stderr bytes per successful call.

With ``--fastmcp1-python`` the bare mcp 1.x FastMCP server runs as a third side (figures "vs FastMCP 1.x");
the batches are interleaved, every round in another order of the sides."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import time
from collections import defaultdict

import httpx2

from _common import (
    API_KEY,
    SECRET,
    Json,
    Upstream,
    cpu_seconds,
    fastmcp1_from_args,
    figure,
    paired_figure,
    pct,
    rotations,
    run_script,
    server_env,
    servers_from_args,
    stdio_server,
    upstream,
)

TITLE = "stdio calls"
BODY = json.dumps(
    {"service_id": "svc_bench_001", "credential_type": "bearer", "credential_value": SECRET}
).encode()


class RawPost:
    """The cheapest possible client of the upstream: one keep-alive socket, pre-built request bytes."""

    def __init__(self, up: Upstream) -> None:
        self.sock = socket.create_connection((up.host, up.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = (
            f"POST /v1/credentials/store HTTP/1.1\r\nhost: {up.host}:{up.port}\r\ncontent-type: application/json\r\n"
            f"danube-api-key: {API_KEY}\r\ncontent-length: {len(BODY)}\r\n\r\n"
        ).encode() + BODY

    def post(self) -> bytes:
        self.sock.sendall(self.request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self.sock.recv(65536)
        head = buf[:end].lower().split(b"\r\n")
        length = next(int(h.split(b":", 1)[1]) for h in head if h.startswith(b"content-length:"))
        while len(buf) < end + 4 + length:
            buf += self.sock.recv(65536)
        return buf

    def timed(self, n: int) -> list[float]:
        pc = time.perf_counter
        out = []
        for _ in range(n):
            t0 = pc()
            self.post()
            out.append(pc() - t0)
        return out

    def close(self) -> None:
        self.sock.close()


def httpx_timed(client: httpx2.Client, n: int) -> list[float]:
    pc = time.perf_counter
    out = []
    headers = {"danube-api-key": API_KEY, "content-type": "application/json"}
    for _ in range(n):
        t0 = pc()
        client.post("/v1/credentials/store", content=BODY, headers=headers)
        out.append(pc() - t0)
    return out


def run(args: argparse.Namespace) -> Json:
    servers = servers_from_args(args)
    fm1 = fastmcp1_from_args(args)
    if fm1 is not None:
        servers["fastmcp1"] = fm1
    batch = max(1, args.calls // args.rounds)
    lat: dict[str, list[float]] = defaultdict(list)
    cpu_per_call: dict[str, list[float]] = defaultdict(list)
    stderr_bytes: dict[str, int] = defaultdict(int)
    ok: dict[str, int] = defaultdict(int)
    with contextlib.ExitStack() as stack:
        up = stack.enter_context(upstream(args.upstream))
        env = server_env(up.url, args.env)
        clients = {side: stack.enter_context(stdio_server(cmd, env)) for side, cmd in servers.items()}
        hx = stack.enter_context(httpx2.Client(base_url=up.url))
        raw = RawPost(up)
        stack.callback(raw.close)
        for c in clients.values():
            c.tools_list()
            c.timed_calls(args.warmup)
        raw.timed(args.warmup)
        httpx_timed(hx, args.warmup)
        for order in rotations(list(servers), args.rounds):
            lat["direct_raw"] += raw.timed(batch)
            lat["direct_httpx"] += httpx_timed(hx, batch)
            for side in order:
                c = clients[side]
                err0, cpu0 = c.child.stderr_size(), cpu_seconds(c.child.pid)
                t, n_ok = c.timed_calls(batch)
                cpu_per_call[side].append((cpu_seconds(c.child.pid) - cpu0) / batch * 1000)
                stderr_bytes[side] += c.child.stderr_size() - err0
                ok[side] += n_ok
                lat[side] += t
    ms = {k: [x * 1000 for x in v] for k, v in lat.items()}
    base, base_httpx = pct(ms["direct_raw"], 50), pct(ms["direct_httpx"], 50)
    o, r = servers["ours"].label, servers["ref"].label
    figures = {
        "stdio call p50": figure(pct(ms[o], 50), pct(ms[r], 50), "ms"),
        "stdio call p99": figure(pct(ms[o], 99), pct(ms[r], 99), "ms"),
        "p50 overhead above direct POST": figure(pct(ms[o], 50) - base, pct(ms[r], 50) - base, "ms"),
        "p50 overhead above direct httpx2 POST": figure(
            pct(ms[o], 50) - base_httpx, pct(ms[r], 50) - base_httpx, "ms"
        ),
        "server CPU per stdio call": paired_figure(cpu_per_call[o], cpu_per_call[r], "ms"),
        "stderr bytes per ok call": figure(
            stderr_bytes[o] / max(ok[o], 1), stderr_bytes[r] / max(ok[r], 1), "B", float("nan")
        ),
        "failed calls": figure(len(ms[o]) - ok[o], len(ms[r]) - ok[r], "count", float("nan")),
    }
    if "fastmcp1" in servers:
        f = "fastmcp1"
        figures["stdio call p50 vs FastMCP 1.x"] = figure(pct(ms[o], 50), pct(ms[f], 50), "ms")
        figures["server CPU per stdio call vs FastMCP 1.x"] = paired_figure(
            cpu_per_call[o], cpu_per_call[f], "ms"
        )
        figures["failed calls (FastMCP 1.x)"] = figure(
            len(ms[o]) - ok[o], len(ms[f]) - ok[f], "count", float("nan")
        )
    return {
        "figures": figures,
        "direct_post_p50_ms": {"raw_socket": base, "httpx_sync": base_httpx},
        "calls_per_server": len(ms[o]),
        "cpu_per_call_ms_rounds": dict(cpu_per_call),
    }


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per server")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved batches per server")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls per server first")


def main(argv: list[str] | None = None) -> int:
    def run_and_print(args: argparse.Namespace) -> Json:
        result = run(args)
        print(f"direct POST p50 (ms): {result['direct_post_p50_ms']}")
        return result

    return run_script(TITLE, add_args, run_and_print, argv)


if __name__ == "__main__":
    raise SystemExit(main())
