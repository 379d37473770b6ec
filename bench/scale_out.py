"""Scaling out (issue 13): figures for the deployment guide's sizing advice.

1. Stateless 2026-07-28 ``tools/call`` throughput with 1 and with 2 uvicorn workers
   (``uvicorn --factory danube_mcp.http:create_app --workers N``), same load: calls/s, p50/p99.
   The ratio "2 workers / 1 worker" is the figure; the issue's target is >= 1.6.
2. The cost of shared state for one secure-input round trip (the link flow: the call that opens
   the entry, the page POST that enters the value, the call that takes and stores it), one process
   with the embedded memory store vs. the same process with Redis on 127.0.0.1: median ms per flow
   and the added ms.

Needs ``redis-server`` on PATH for part 2 (Debian: bash .ci/setup-redis --install).
Prints a table and writes bench/results/scale_out-<time>.json. Nothing here asserts.

    python bench/scale_out.py                      # ~1.5 min
    python bench/scale_out.py --duration 3 --rounds 2 --flows 20   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    SRC,
    Json,
    RawHttpConn,
    cpu_seconds,
    loadavg,
    machine_busy_seconds,
    median,
    own_cpu_seconds,
    parse_mcp_body,
    pct,
    server_env,
    upstream,
)

MODERN = "2026-07-28"
TOKEN = "bench-access-token-0123456789"
VALUE = "sk-bench-scale-out-0123456789"
LISTEN = re.compile(r"listening on (http://\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def meta() -> Json:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
    }


def call_body(rid: int, with_value: bool) -> bytes:
    arguments: Json = {"service_id": "svc_bench_001", "credential_type": "bearer"}
    if with_value:
        arguments["credential_value"] = VALUE
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": "store_credential", "arguments": arguments, "_meta": meta()},
        }
    ).encode()


CALL_HEADERS = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": MODERN,
    "mcp-method": "tools/call",
    "mcp-name": "store_credential",
    "authorization": f"Bearer {TOKEN}",
}


async def call(conn: RawHttpConn, rid: int, with_value: bool = True) -> Json:
    status, headers, body = await conn.request("POST", "/mcp", CALL_HEADERS, call_body(rid, with_value))
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    for message in parse_mcp_body(headers, body):
        if message.get("id") == rid:
            result: Json = message["result"]
            return result
    raise RuntimeError("no answer")


# --------------------------------------------------------------------------- 1. workers


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
                if s.recv(32).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError("uvicorn did not become healthy")


def start_workers(workers: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "danube_mcp.http:create_app",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_healthy(port, proc)
    return proc, port


def tree_pids(pid: int) -> list[int]:
    """The uvicorn supervisor and its worker processes."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *(int(x) for x in f.read().split())]
    except OSError:
        return [pid]


def tree_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


async def load(port: int, concurrency: int, duration: float, warmup: float, pids: list[int]) -> Json:
    lat: list[float] = []
    errors = 0
    counting = False
    conns = [RawHttpConn("127.0.0.1", port) for _ in range(concurrency)]

    async def worker(conn: RawHttpConn, start_id: int) -> None:
        nonlocal errors
        rid = start_id
        while True:
            rid += concurrency
            t0 = time.perf_counter()
            try:
                result = await call(conn, rid)
                ok = result.get("isError") is not True
            except Exception:
                ok = False
                await conn.close()
            if counting:
                if ok:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

    # Connections arrive one by one, as clients do, so the kernel can hand them to either worker
    # (opened all at once, one worker tends to accept them all).
    for i, conn in enumerate(conns):
        await call(conn, 10_000_000 + i)
        await asyncio.sleep(0.02)
    tasks = [asyncio.create_task(worker(c, i)) for i, c in enumerate(conns)]
    await asyncio.sleep(warmup)
    counting = True
    t0 = time.perf_counter()
    server0, client0 = tree_cpu(pids), own_cpu_seconds()
    per_pid0 = [tree_cpu([p]) for p in pids]
    await asyncio.sleep(duration)
    counting = False
    elapsed = time.perf_counter() - t0
    server_cpu, client_cpu = tree_cpu(pids) - server0, own_cpu_seconds() - client0
    per_pid = sorted((tree_cpu([p]) - c for p, c in zip(pids, per_pid0, strict=True)), reverse=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in conns:
        await c.close()
    return {
        "calls_per_s": len(lat) / elapsed,
        "p50_ms": pct(lat, 50) * 1000,
        "p99_ms": pct(lat, 99) * 1000,
        "errors": errors,
        "server_cpu_ms_per_call": 1000 * server_cpu / max(1, len(lat)),
        "server_cpu_share": server_cpu / elapsed,  # in cores
        "client_cpu_share": client_cpu / elapsed,  # the load generator, in cores
        # the busiest process's share of the server CPU: 1.0 means one worker did all the work
        "busiest_process_share": per_pid[0] / server_cpu if server_cpu else float("nan"),
    }


def bench_workers(args: argparse.Namespace, up_url: str) -> Json:
    env = server_env(up_url)
    env.update(DANUBE_MCP_TRANSPORT="streamable-http", DANUBE_MCP_AUTH_TOKEN=TOKEN)
    rounds: dict[int, list[Json]] = {1: [], 2: []}
    for r in range(args.rounds):
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            proc, port = start_workers(workers, env)
            try:
                pids = tree_pids(proc.pid)
                result = asyncio.run(load(port, args.concurrency, args.duration, args.warmup, pids))
                rounds[workers].append(result)
            finally:
                proc.terminate()
                proc.wait(20)
    one = [x["calls_per_s"] for x in rounds[1]]
    two = [x["calls_per_s"] for x in rounds[2]]
    return {
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "one_worker": rounds[1],
        "two_workers": rounds[2],
        "calls_per_s_1": median(one),
        "calls_per_s_2": median(two),
        "ratio_2_over_1": median([b / a for a, b in zip(one, two, strict=True)]),
    }


# --------------------------------------------------------------------------- 2. secure input


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (bash .ci/setup-redis --install)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(8).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("redis-server did not start")


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = Path(tempfile.mkstemp(prefix="scale-out-", suffix=".log")[1])
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "danube_mcp",
                "--transport",
                "streamable-http",
                "--port",
                "0",
                "--secure-input",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = LISTEN.search(log.read_text(errors="replace"))
        if m:
            return proc, int(m.group(1).rsplit(":", 1)[1]), log
        if proc.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace")[-500:])
        time.sleep(0.02)
    raise TimeoutError("server did not start")


async def flows(port: int, n: int) -> list[float]:
    conn = RawHttpConn("127.0.0.1", port)
    page = RawHttpConn("127.0.0.1", port)
    form = b"credential_value=" + VALUE.encode()
    times: list[float] = []
    for i in range(n + 2):  # two warm-up flows
        t0 = time.perf_counter()
        first = await call(conn, 3 * i + 1, with_value=False)
        url = first["structuredContent"]["input_url"]
        path = "/" + url.split("/", 3)[3]
        status, _, _ = await page.request(
            "POST",
            path,
            {"content-type": "application/x-www-form-urlencoded", "origin": f"http://127.0.0.1:{port}"},
            form,
        )
        if status != 200:
            raise RuntimeError(f"page POST answered {status}")
        second = await call(conn, 3 * i + 2, with_value=False)
        if second.get("structuredContent", {}).get("success") is not True:
            raise RuntimeError(f"flow did not store: {second}")
        if i >= 2:
            times.append(time.perf_counter() - t0)
    await conn.close()
    await page.close()
    return times


def bench_secure_input(args: argparse.Namespace, up_url: str) -> Json:
    folder = Path(tempfile.mkdtemp(prefix="scale-out-redis-"))
    redis_proc, redis_url = start_redis(folder)
    base = server_env(up_url)
    base.update(DANUBE_MCP_AUTH_TOKEN=TOKEN)
    shared = {**base, "DANUBE_MCP_STATE_URL": redis_url, "DANUBE_MCP_STATE_KEY": secrets.token_urlsafe(48)}
    per_side: dict[str, list[float]] = {"memory": [], "redis": []}
    try:
        for r in range(args.rounds):
            for side in ("memory", "redis") if r % 2 == 0 else ("redis", "memory"):
                proc, port, log = start_server(base if side == "memory" else shared)
                try:
                    per_side[side].append(median(asyncio.run(flows(port, args.flows))))
                finally:
                    proc.terminate()
                    proc.wait(20)
                    log.unlink()
    finally:
        redis_proc.kill()
        redis_proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    mem, red = median(per_side["memory"]), median(per_side["redis"])
    return {
        "flows_per_round": args.flows,
        "memory_ms": mem * 1000,
        "redis_ms": red * 1000,
        "added_ms": (red - mem) * 1000,
        "ratio_redis_over_memory": red / mem,
        "rounds": {k: [x * 1000 for x in v] for k, v in per_side.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per throughput phase")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds before measuring")
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side (alternating order)")
    parser.add_argument("--flows", type=int, default=40, help="secure-input flows per round")
    parser.add_argument("--only", choices=("workers", "secure-input"), default=None)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(SRC)
    load_before = loadavg()
    busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.monotonic()
    out: Json = {"load_before": load_before, "cores": os.cpu_count()}
    with upstream() as up:
        if args.only in (None, "workers"):
            out["workers"] = bench_workers(args, up.url)
        if args.only in (None, "secure-input"):
            out["secure_input"] = bench_secure_input(args, up.url)
    wall = time.monotonic() - t0
    out["load_after"] = loadavg()
    # CPU the rest of the machine used meanwhile (other agents), as a share of all cores
    others = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    out["other_processes_cpu_share"] = max(0.0, others) / (wall * (os.cpu_count() or 1))
    print_report(out)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale_out-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwritten to {path.relative_to(RESULTS.parent.parent)}")


def print_report(out: dict[str, Any]) -> None:
    print(
        f"load average before: {out['load_before'][0]:.2f}, after: {out['load_after'][0]:.2f} "
        f"({out['cores']} cores; other processes used ~{out['other_processes_cpu_share']:.0%} of them)"
    )
    if "workers" in out:
        w = out["workers"]
        print(
            f"\nstateless 2026 tools/call, {w['concurrency']} keep-alive connections, {w['duration_s']} s per phase"
        )
        for label, key in (("1 worker ", "one_worker"), ("2 workers", "two_workers")):
            runs = w[key]
            print(
                f"  {label}: {median([x['calls_per_s'] for x in runs]):7.0f} calls/s  "
                f"p50 {median([x['p50_ms'] for x in runs]):6.1f} ms  p99 {median([x['p99_ms'] for x in runs]):6.1f} ms  "
                f"errors {sum(x['errors'] for x in runs)}\n"
                f"             server CPU {median([x['server_cpu_ms_per_call'] for x in runs]):.2f} ms/call, "
                f"busy {median([x['server_cpu_share'] for x in runs]):.2f} cores; "
                f"load generator {median([x['client_cpu_share'] for x in runs]):.2f} cores; "
                f"busiest worker did {median([x['busiest_process_share'] for x in runs]):.0%}"
            )
        print(f"  2 workers / 1 worker: {w['ratio_2_over_1']:.2f}x (median of per-round ratios)")
    if "secure_input" in out:
        s = out["secure_input"]
        print(
            f"\nsecure input, link flow (call + page POST + call), median of {s['flows_per_round']} flows per round"
        )
        print(
            f"  memory: {s['memory_ms']:.1f} ms   redis: {s['redis_ms']:.1f} ms   "
            f"added: {s['added_ms']:+.1f} ms ({s['ratio_redis_over_memory']:.2f}x)"
        )


if __name__ == "__main__":
    main()
