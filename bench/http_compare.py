"""danube-mcp over HTTP, side by side with two bare mcp 2.x servers (issue 16's figures).

Sides, all forwarding to one fake upstream, each in its stateless JSON mode (``--stateless --json-response``)
and its default mode:

* ``ours``  the server under test (``--server``, default ``python -m danube_mcp``);
* ``ll``    ``reference_server.py``: the bare low-level ``Server`` (the ratio's denominator);
* ``ms``    ``reference_mcpserver.py``: the obvious ``MCPServer`` server.

Per round (rounds interleave sides, each round another order), quiet and then with a competing CPU load (one
busy process per core; every other round the loaded block goes first):

* 2026-07-28 stateless ``tools/call``, 32 clients, each on its own keep-alive connection: calls/s, server CPU
  per call (``/proc/<pid>/stat``), p50/p99, errors;
* initialize-era streamable HTTP, 32 sessions (initialize + initialized, then ``tools/call`` in the session);
* the floor: the same store request POSTed by the same client straight to the fake upstream.

Then, once: p50 at 1 client for every transport and the floor (the overhead above the floor); two uvicorn
workers against one (``uvicorn --factory danube_mcp.http:create_app``, stateless JSON); idle RSS against the
bare low-level server, RSS growth over ``--memory-calls`` calls, and stderr bytes per call over the whole run.

CPU placement (``--pin``, on by default with 2+ CPUs): every server thread on the last CPU, the bench client and
the upstream on the others, so the client never takes the server's core; the busy processes go one per CPU.
The worker comparison is not pinned (two workers need both cores). ``os.getloadavg()`` and the machine's busy
share are recorded for every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from _common import (
    BENCH,
    Json,
    ServerCmd,
    cpu_seconds,
    figure,
    headers_from_args,
    http_server,
    loadavg,
    machine_busy_seconds,
    median,
    paired_figure,
    parse_cmd,
    pct,
    proc_status_kib,
    rotations,
    run_script,
    server_env,
    spawn,
    upstream,
    wait_idle,
)
from _load import (
    Client,
    LoadResult,
    close_legacy_session,
    drive,
    drive_count,
    floor_ok,
    modern_call,
    open_legacy_session,
    upstream_post,
)

TITLE = "HTTP: danube-mcp vs bare mcp 2.x servers (issue 16)"
MODES = {"json": ("--stateless", "--json-response"), "default": ()}
KINDS = ("ours", "ll", "ms")
KIND_NAMES = {"ours": "ours", "ll": "bare low-level Server", "ms": "bare MCPServer"}
WORKER_TOKEN = "bench-access-token-0123456789abcdef"


# --------------------------------------------------------------------------------------------- CPU placement


def all_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (threads created later inherit from their creator)."""
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
                out += kids
                todo += kids
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = cpu_seconds(pid)
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


@contextlib.contextmanager
def busy_load(cpus: Sequence[int]) -> Iterator[list[int]]:
    """One busy-looping process per CPU, pinned to it, for the duration."""
    procs = []
    try:
        for cpu in cpus:
            p = subprocess.Popen(
                [sys.executable, "-c", "while True: pass"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            with contextlib.suppress(OSError):
                os.sched_setaffinity(p.pid, {cpu})
            procs.append(p)
        time.sleep(0.2)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------------------------- one phase


@dataclass
class Target:
    """Something to send load to: a running server (or the upstream) and what one client sends."""

    name: str
    pid: int | None  # whose CPU counts (with its descendants); None for the floor
    host: str
    port: int
    path: str = "/mcp"
    # More servers behind the same name (independent processes): clients alternate between all.
    others: tuple[Target, ...] = ()

    def cpu(self) -> float:
        return sum(tree_cpu_seconds(t.pid) for t in (self, *self.others) if t.pid)

    async def clients(self, n: int, workload: str, extra: Sequence[tuple[str, str]]) -> list[Client]:
        if self.others:
            every = (self, *self.others)
            parts = [
                await Target(t.name, t.pid, t.host, t.port, t.path).clients(
                    len(range(i, n, len(every))), workload, extra
                )
                for i, t in enumerate(every)
            ]
            return [c for part in parts for c in part]
        if workload == "floor":
            cs = [
                Client(self.host, self.port, upstream_post(self.host, self.port), ok=floor_ok)
                for _ in range(n)
            ]
        elif workload == "modern":
            req = modern_call(self.host, self.port, self.path, extra)
            cs = [Client(self.host, self.port, req) for _ in range(n)]
        else:
            return list(
                await asyncio.gather(
                    *(open_legacy_session(self.host, self.port, self.path, extra) for _ in range(n))
                )
            )
        await asyncio.gather(*(c.connect() for c in cs))
        return cs

    async def close(self, clients: Sequence[Client], workload: str, extra: Sequence[tuple[str, str]]) -> None:
        if workload == "legacy":
            await asyncio.gather(*(close_legacy_session(c, self.path, extra) for c in clients))
        else:
            for c in clients:
                c.close()


async def phase(
    target: Target,
    workload: str,
    n: int,
    duration: float,
    warmup: int,
    extra: Sequence[tuple[str, str]],
    stagger: bool = False,
) -> Json:
    clients = await target.clients(n, workload, extra)
    if stagger:
        # One connection after another, each used once before the next opens: with a burst of
        # connects, one uvicorn worker's accept loop takes them all and the other worker idles.
        for c in clients:
            c.close()
            c.conn = None
        for c in clients:
            await c.call()
    try:
        for _ in range(warmup):
            await asyncio.gather(*(c.call() for c in clients))
        cpu = target.cpu
        load = loadavg()[0]
        busy0, cpu0, own0 = machine_busy_seconds(), cpu(), time.process_time()
        res: LoadResult = await drive(clients, duration)
        server_cpu, own = cpu() - cpu0, time.process_time() - own0
        busy = machine_busy_seconds() - busy0
    finally:
        await target.close(clients, workload, extra)
    calls = max(res.calls, 1)
    return {
        "calls": res.calls,
        "calls_per_s": res.calls / res.elapsed,
        "p50_ms": pct(res.latencies, 50) * 1000,
        "p99_ms": pct(res.latencies, 99) * 1000,
        "errors": res.errors,
        "error_samples": res.error_samples,
        "cpu_per_call_ms": server_cpu / calls * 1000,
        "client_cpu_per_call_ms": own / calls * 1000,
        "loadavg_1min": load,
        "machine_busy_cores": busy / res.elapsed,
    }


# --------------------------------------------------------------------------------------------- servers


def side_cmds(args: argparse.Namespace) -> dict[str, ServerCmd]:
    """``<kind>-<mode>`` -> command, for the three kinds and both modes."""
    base = {
        "ours": parse_cmd(args.server),
        "ll": parse_cmd(f"python {BENCH / 'reference_server.py'}"),
        "ms": parse_cmd(f"python {BENCH / 'reference_mcpserver.py'}"),
    }
    if args.baseline_src:
        # The same server from another source tree (e.g. `git archive <rev> src | tar -x -C DIR`).
        src = os.path.abspath(os.path.join(args.baseline_src, "src"))
        base["base"] = ("env", f"PYTHONPATH={src}", *parse_cmd(args.server))
    http = tuple(shlex.split(args.http_args))
    return {
        f"{kind}-{mode}": ServerCmd(f"{kind}-{mode}", argv, http + flags, args.http_path)
        for kind, argv in base.items()
        for mode, flags in MODES.items()
    }


@contextlib.contextmanager
def servers(
    cmds: dict[str, ServerCmd], env: dict[str, str], cpus: set[int] | None
) -> Iterator[dict[str, Target]]:
    with contextlib.ExitStack() as stack:
        out: dict[str, Target] = {}
        for name, cmd in cmds.items():
            srv = stack.enter_context(http_server(cmd, env))
            if cpus:
                pin_process(srv.child.pid, cpus)
            out[name] = Target(name, srv.child.pid, srv.host, srv.port, srv.path)
            out[name].child = srv.child  # type: ignore[attr-defined]
        yield out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_workers(workers: int, env: dict[str, str], timeout: float = 60.0) -> Iterator[Target]:
    """``uvicorn --factory danube_mcp.http:create_app --workers N``, configured from the environment as the
    README documents (stateless JSON, an access token because the factory assumes a public bind)."""
    port = free_port()
    env = env | {
        "DANUBE_MCP_TRANSPORT": "streamable-http",
        "DANUBE_MCP_STATELESS": "1",
        "DANUBE_MCP_JSON_RESPONSE": "1",
        "DANUBE_MCP_AUTH_TOKEN": WORKER_TOKEN,
    }
    argv = [
        sys.executable, "-m", "uvicorn", "--factory", "danube_mcp.http:create_app", "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "info", "--no-access-log",
    ]  # fmt: skip
    child = spawn(argv, env, stdio=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            child.stderr.seek(0)
            if child.stderr.read().count(b"Application startup complete") >= workers:
                break
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn --workers {workers} did not start:\n{child.stderr_text()}")
            time.sleep(0.05)
        target = Target(f"workers-{workers}", child.pid, "127.0.0.1", port)
        target.child = child  # type: ignore[attr-defined]
        yield target
    finally:
        child.close()


def rss_mib(pid: int, reads: int = 5) -> float:
    values = []
    for _ in range(reads):
        values.append(proc_status_kib(pid) / 1024)
        time.sleep(0.02)
    return median(values)


# --------------------------------------------------------------------------------------------- the run


async def throughput(
    args: argparse.Namespace, targets: dict[str, Target], floor: Target, extra: list[tuple[str, str]]
) -> Json:
    """The interleaved rounds: per round, quiet and loaded blocks; per block every side, both workloads."""
    rows: dict[str, dict[str, dict[str, list[Json]]]] = {
        cond: {wl: defaultdict(list) for wl in ("modern", "legacy", "floor")} for cond in ("quiet", "loaded")
    }
    rounds: list[Json] = []
    sides = list(targets)
    orders = list(rotations(sides, args.rounds))
    busy_cpus = all_cpus()
    for r in range(args.rounds):
        conds = ("quiet", "loaded") if r % 2 == 0 else ("loaded", "quiet")
        if args.no_load:
            conds = ("quiet",)
        round_info: Json = {"round": r + 1, "loadavg_start": loadavg(), "order": list(orders[r])}
        for cond in conds:
            with busy_load(busy_cpus) if cond == "loaded" else contextlib.nullcontext([]):
                for wl in args.workloads:
                    for side in orders[r]:
                        await asyncio.to_thread(
                            wait_idle, [targets[s].pid for s in sides if targets[s].pid], 0.15, 5.0
                        )
                        rows[cond][wl][side].append(
                            await phase(targets[side], wl, args.clients, args.duration, args.warmup, extra)
                        )
                rows[cond]["floor"]["floor"].append(
                    await phase(floor, "floor", args.clients, args.duration, args.warmup, ())
                )
        round_info["loadavg_end"] = loadavg()
        rounds.append(round_info)
        print(
            f"  round {r + 1}/{args.rounds}: load average {round_info['loadavg_start'][0]:.2f} -> "
            f"{round_info['loadavg_end'][0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return {"rows": rows, "rounds": rounds}


async def latency_at_one(
    args: argparse.Namespace, targets: dict[str, Target], floor: Target, extra: list[tuple[str, str]]
) -> dict[str, dict[str, float]]:
    """p50 with one client, per transport and for the floor, interleaved."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in range(max(1, args.rounds)):
        for side in list(targets) if r % 2 == 0 else list(reversed(targets)):
            for wl in ("modern", "legacy"):
                res = await phase(targets[side], wl, 1, args.duration / 2, 20, extra)
                out[side][wl].append(res["p50_ms"])
            res = await phase(floor, "floor", 1, args.duration / 2, 20, ())
            out["floor"]["floor"].append(res["p50_ms"])
    return {s: {wl: median(v) for wl, v in d.items()} for s, d in out.items()}


async def workers_phase(args: argparse.Namespace, env: dict[str, str]) -> dict[str, list[Json]]:
    """``--workers 1`` vs ``--workers 2``, and two independent ``--workers 1`` processes (clients split
    between their ports) to tell the app's scaling from uvicorn's multiprocess mode."""
    extra = [("authorization", f"Bearer {WORKER_TOKEN}")]
    out: dict[str, list[Json]] = {"1": [], "2": [], "2p": []}
    with (
        uvicorn_workers(1, env) as one,
        uvicorn_workers(2, env) as two,
        uvicorn_workers(1, env) as p1,
        uvicorn_workers(1, env) as p2,
    ):
        pair = Target("two-processes", p1.pid, p1.host, p1.port, p1.path, others=(p2,))
        targets = {"1": one, "2": two, "2p": pair}
        pids = [t.pid for t in (one, two, p1, p2) if t.pid]
        for r in range(args.rounds):
            for n in list(rotations(list(targets), r + 1))[r]:
                await asyncio.to_thread(wait_idle, pids, 0.15, 5.0)
                procs = descendants(targets[n].pid or 0)
                cpu0 = {p: cpu_seconds(p) for p in procs}
                row = await phase(
                    targets[n], "modern", args.clients, args.duration, args.warmup, extra, stagger=True
                )
                row["worker_cpu_s"] = [round(cpu_seconds(p) - c, 2) for p, c in cpu0.items()]
                out[n].append(row)
    return out


async def memory_phase(
    args: argparse.Namespace, cmds: dict[str, ServerCmd], env: dict[str, str], cpus: set[int] | None
) -> Json:
    """Fresh ours-json and ll-json: idle RSS after one call, then growth over ``--memory-calls`` calls."""
    pick = {"ours": cmds["ours-json"], "ll": cmds["ll-json"]}
    with servers(pick, env, cpus) as ts:
        clients = {k: await t.clients(1, "modern", ()) for k, t in ts.items()}
        for cs in clients.values():
            await cs[0].call()
        for c in clients.values():
            c[0].close()
        time.sleep(0.5)
        idle = {k: rss_mib(t.pid) for k, t in ts.items() if t.pid}
        many = {k: await t.clients(8, "modern", ()) for k, t in ts.items()}
        await asyncio.gather(*(drive_count(cs, 500) for cs in many.values()))
        time.sleep(0.3)
        warm = {k: rss_mib(t.pid) for k, t in ts.items() if t.pid}
        res = await asyncio.gather(*(drive_count(cs, args.memory_calls) for cs in many.values()))
        failed = {k: r.errors for k, r in zip(many, res, strict=True)}
        for cs in many.values():
            for c in cs:
                c.close()
        time.sleep(0.5)
        final = {k: rss_mib(t.pid) for k, t in ts.items() if t.pid}
    return {"idle": idle, "warm": warm, "final": final, "failed": failed}


def run(args: argparse.Namespace) -> Json:
    cpus = all_cpus()
    pin = args.pin and len(cpus) >= 2
    server_cpus = {cpus[-1]} if pin else None
    client_cpus = set(cpus[:-1]) if pin else None
    extra = headers_from_args(args)
    cmds = side_cmds(args)
    if args.sides:
        cmds = {k: v for k, v in cmds.items() if k in args.sides or k.split("-")[0] in args.sides}
    result: Json = {
        "pinned": {"servers": sorted(server_cpus or []), "client_and_upstream": sorted(client_cpus or [])}
    }
    own_affinity = os.sched_getaffinity(0)
    try:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        with upstream(args.upstream) as up:
            if up.child is not None and client_cpus:
                pin_process(up.child.pid, client_cpus)
            env = server_env(up.url, args.env)
            floor = Target("floor", None, up.host, up.port)
            with servers(cmds, env, server_cpus) as targets:
                err0 = {k: t.child.stderr_size() for k, t in targets.items()}  # type: ignore[attr-defined]
                tp = asyncio.run(throughput(args, targets, floor, extra))
                lat = asyncio.run(latency_at_one(args, targets, floor, extra))
                err_bytes = {k: t.child.stderr_size() - err0[k] for k, t in targets.items()}  # type: ignore[attr-defined]
            result |= {"throughput": tp, "latency_1": lat, "stderr_bytes": err_bytes}
            if not args.skip_workers:
                os.sched_setaffinity(0, own_affinity)
                if up.child is not None:
                    pin_process(up.child.pid, own_affinity)
                result["workers"] = asyncio.run(workers_phase(args, env))
                if client_cpus:
                    os.sched_setaffinity(0, client_cpus)
                    if up.child is not None:
                        pin_process(up.child.pid, client_cpus)
            if args.memory_calls and "ours-json" in cmds and "ll-json" in cmds:
                result["memory"] = asyncio.run(memory_phase(args, cmds, env, server_cpus))
    finally:
        os.sched_setaffinity(0, own_affinity)
    result["figures"] = summarise(result, args)
    return result


# --------------------------------------------------------------------------------------------- figures


def _col(rows: list[Json], key: str) -> list[float]:
    return [float(x[key]) for x in rows]


def summarise(result: Json, args: argparse.Namespace) -> dict[str, Json]:
    figures: dict[str, Json] = {}
    tp = result["throughput"]["rows"]
    n = args.clients
    wl_names = {
        "modern": f"2026 stateless tools/call, {n} clients",
        "legacy": f"initialize-era, {n} sessions",
    }
    for mode in MODES:
        for wl, wl_name in wl_names.items():
            for ref in ("ll", "ms", "base"):
                o, r = tp["quiet"][wl].get(f"ours-{mode}"), tp["quiet"][wl].get(f"{ref}-{mode}")
                if not o or not r:
                    continue
                vs = {"ll": "", "ms": " vs MCPServer", "base": " vs baseline"}[ref]
                label = f"{wl_name} ({mode}){vs}"
                figures[f"calls/s, {label}"] = paired_figure(
                    _col(o, "calls_per_s"), _col(r, "calls_per_s"), "1/s"
                )
                if ref == "ll":
                    figures[f"server CPU/call, {label}"] = paired_figure(
                        _col(o, "cpu_per_call_ms"), _col(r, "cpu_per_call_ms"), "ms"
                    )
                    figures[f"p50, {label}"] = paired_figure(_col(o, "p50_ms"), _col(r, "p50_ms"), "ms")
                    figures[f"p99, {label}"] = paired_figure(_col(o, "p99_ms"), _col(r, "p99_ms"), "ms")
                    figures[f"errors, {label}"] = figure(
                        sum(_col(o, "errors")), sum(_col(r, "errors")), "count", float("nan")
                    )
                lo, lr = tp["loaded"][wl].get(f"ours-{mode}"), tp["loaded"][wl].get(f"{ref}-{mode}")
                if lo and lr:
                    quiet = figures[f"calls/s, {label}"]
                    loaded = paired_figure(_col(lo, "calls_per_s"), _col(lr, "calls_per_s"), "1/s")
                    figures[f"calls/s under CPU load, {label}"] = loaded
                    figures[f"ratio kept under load, calls/s, {label}"] = figure(
                        loaded["ratio"], quiet["ratio"], "ratio", loaded["ratio"] / quiet["ratio"]
                    )
                    if ref == "ll":
                        cq = figures[f"server CPU/call, {label}"]
                        cl = paired_figure(_col(lo, "cpu_per_call_ms"), _col(lr, "cpu_per_call_ms"), "ms")
                        figures[f"server CPU/call under CPU load, {label}"] = cl
                        # For CPU (lower is better) the ratio "falls" when it rises: kept = quiet / loaded.
                        figures[f"ratio kept under load, CPU/call, {label}"] = figure(
                            cl["ratio"], cq["ratio"], "ratio", cq["ratio"] / cl["ratio"]
                        )
                        figures[f"errors under CPU load, {label}"] = figure(
                            sum(_col(lo, "errors")), sum(_col(lr, "errors")), "count", float("nan")
                        )
    for mode in MODES:
        for wl, wl_name in wl_names.items():
            b, r = tp["quiet"][wl].get(f"base-{mode}"), tp["quiet"][wl].get(f"ll-{mode}")
            lb, lr = tp["loaded"][wl].get(f"base-{mode}"), tp["loaded"][wl].get(f"ll-{mode}")
            if b and r:
                label = f"{wl_name} ({mode}), baseline vs bare low-level"
                quiet = paired_figure(_col(b, "calls_per_s"), _col(r, "calls_per_s"), "1/s")
                figures[f"calls/s, {label}"] = quiet
                figures[f"server CPU/call, {label}"] = paired_figure(
                    _col(b, "cpu_per_call_ms"), _col(r, "cpu_per_call_ms"), "ms"
                )
                if lb and lr:
                    loaded = paired_figure(_col(lb, "calls_per_s"), _col(lr, "calls_per_s"), "1/s")
                    figures[f"calls/s under CPU load, {label}"] = loaded
                    figures[f"ratio kept under load, calls/s, {label}"] = figure(
                        loaded["ratio"], quiet["ratio"], "ratio", loaded["ratio"] / quiet["ratio"]
                    )
    fl = tp["quiet"]["floor"].get("floor")
    if fl:
        figures[f"floor: direct POST to upstream, {n} clients, calls/s"] = figure(
            median(_col(fl, "calls_per_s")), float("nan"), "1/s", float("nan")
        )
    lat = result.get("latency_1", {})
    floor_p50 = lat.get("floor", {}).get("floor", float("nan"))
    if lat:
        figures["floor: direct POST p50, 1 client"] = figure(floor_p50, float("nan"), "ms", float("nan"))
        for mode in MODES:
            for wl in ("modern", "legacy"):
                o = lat.get(f"ours-{mode}", {}).get(wl)
                r = lat.get(f"ll-{mode}", {}).get(wl)
                if o is None or r is None:
                    continue
                wn = "2026 stateless" if wl == "modern" else "initialize-era"
                figures[f"p50 overhead above floor, 1 client, {wn} ({mode})"] = figure(
                    o - floor_p50, r - floor_p50, "ms"
                )
    w = result.get("workers")
    if w:
        figures[f"2 uvicorn workers vs 1, calls/s, 2026 stateless JSON, {n} clients"] = paired_figure(
            _col(w["2"], "calls_per_s"), _col(w["1"], "calls_per_s"), "1/s"
        )
        figures["2 uvicorn workers vs 1, server CPU/call"] = paired_figure(
            _col(w["2"], "cpu_per_call_ms"), _col(w["1"], "cpu_per_call_ms"), "ms"
        )
        figures[f"2 independent processes vs 1, calls/s, 2026 stateless JSON, {n} clients"] = paired_figure(
            _col(w["2p"], "calls_per_s"), _col(w["1"], "calls_per_s"), "1/s"
        )
        figures["2 uvicorn workers vs 1, bench client CPU/call"] = figure(
            median(_col(w["2"], "client_cpu_per_call_ms")),
            median(_col(w["1"], "client_cpu_per_call_ms")),
            "ms",
        )
        figures["2 uvicorn workers vs 1, errors"] = figure(
            sum(_col(w["2"], "errors")) + sum(_col(w["2p"], "errors")),
            sum(_col(w["1"], "errors")),
            "count",
            float("nan"),
        )
    m = result.get("memory")
    if m:
        figures["HTTP idle RSS (stateless JSON)"] = figure(m["idle"]["ours"], m["idle"]["ll"], "MiB")
        figures[f"HTTP RSS growth over {args.memory_calls} calls"] = figure(
            m["final"]["ours"] - m["warm"]["ours"], m["final"]["ll"] - m["warm"]["ll"], "MiB"
        )
        figures["HTTP memory run failed calls"] = figure(
            m["failed"]["ours"], m["failed"]["ll"], "count", float("nan")
        )
    eb = result.get("stderr_bytes", {})
    calls: dict[str, int] = defaultdict(int)
    for cond in tp.values():
        for wl in cond.values():
            for side, rows in wl.items():
                calls[side] += sum(int(x["calls"]) for x in rows)
    for mode in MODES:
        o, r = f"ours-{mode}", f"ll-{mode}"
        if o in eb and r in eb:
            figures[f"stderr bytes per call, HTTP ({mode})"] = figure(
                eb[o] / max(calls[o], 1), eb[r] / max(calls[r], 1), "B", float("nan")
            )
    return figures


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients / sessions")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per measured phase")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured calls per client first")
    parser.add_argument("--memory-calls", type=int, default=10_000, help="calls for RSS growth (0: skip)")
    parser.add_argument("--no-load", action="store_true", help="skip the competing-CPU-load blocks")
    parser.add_argument("--skip-workers", action="store_true", help="skip the uvicorn --workers comparison")
    parser.add_argument(
        "--sides", nargs="+", default=None, help="only these sides (e.g. ours-json ll-json, or ours ll)"
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=["modern", "legacy"],
        default=["modern", "legacy"],
        help="what to measure",
    )
    parser.add_argument(
        "--baseline-src",
        default=None,
        metavar="DIR",
        help="also run the server from DIR/src (kind 'base', e.g. the code before a change)",
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="do not pin servers and client to CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    return run_script(TITLE, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
