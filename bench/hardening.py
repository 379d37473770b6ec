"""Hostile-load figures of the HTTP server (issue 12 "How it is proven", issue 16's /healthz bullet):

(a) ``/healthz`` latency (p50/p99/max) on its own keep-alive connection, idle and while N clients send
    worst-case bodies nonstop from another process: the largest body of tiny values and one of many
    keys (refused by the value count before parsing), nesting near the limit, escaped strings, the most
    values the count lets through padded with escapes (parsed in full, then refused), and top-level
    arrays (refused before parsing); half of them as 2026-07-28 requests;
(b) an ``initialize`` flood on a loopback bind: sessions opened (counted from the answers), statuses,
    server RSS before/after/peak, once without any key (one caller identity) and once with a different
    ``danube-api-key`` on every request (a new identity each time), and whether a fresh client can
    still open a session afterwards;
(c) the connection cap: N + 200 "drip" connections that never finish their headers: how many the server
    holds, what the others and a new well-behaved client get, server RSS per held connection, how fast
    ``/healthz`` answers again after the drip clients leave, and how long the server holds drips that
    never leave (the read deadline).

Only ``danube-mcp`` is measured (the bare-SDK reference has no limits to show); "ref" is the idle
baseline where there is one. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import resource
import secrets
import time
from collections import Counter
from typing import Any

from _common import (
    REFERENCE_CMD,
    HttpServer,
    Json,
    RawHttpConn,
    ServerCmd,
    cpu_seconds,
    figure,
    http_server,
    initialize_msg,
    loadavg,
    parse_cmd,
    pct,
    proc_status_kib,
    run_script,
    server_env,
    upstream,
)

TITLE = "hardening (HTTP under hostile load)"
NAN = float("nan")
MAX_BODY = 64 * 1024  # danube_mcp.transports.http.MAX_BODY_BYTES
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
MODERN_HEADERS = {
    **JSON_HEADERS,
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "store_credential",
}


def worst_bodies(limit: int = MAX_BODY) -> dict[str, bytes]:
    """Bodies just under the size limit that cost the most to refuse, by kind."""
    room = limit - 64
    flat = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"pad":[' + b"0," * (room // 2 - 40)
    flat = flat.rstrip(b",") + b"]}}"
    depth = 900  # json's C decoder stops near the interpreter's recursion limit (1000)
    deep = b'{"a":' * depth + b"0" + b"}" * depth
    keys = b"{" + b",".join(b'"k%05d":0' % i for i in range(room // 11)) + b"}"
    escaped = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"' + b"\\u00e9" * (room // 6 - 20) + b'"}}'
    array = b"[" + b"{}," * (room // 3 - 1) + b"{}]"
    # As many values as the server's pre-parse count lets through (1,024 commas and colons), the
    # rest of the room an escaped string: the costliest body that reaches both parses.
    head = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"pad":[' + b"0," * 1000 + b'0],"s":"'
    counted = head + b"\\u00e9" * ((room - len(head)) // 6 - 1) + b'"}}'
    out = {"flat": flat, "deep": deep, "keys": keys, "escaped": escaped, "array": array, "counted": counted}
    for name, body in out.items():
        assert len(body) <= limit, (name, len(body))
        json.loads(body)
    return out


# --------------------------------------------------------------------------- (a) garbage + /healthz


async def _garbage(host: str, port: int, path: str, clients: int, duration: float) -> dict[str, Any]:
    bodies = list(worst_bodies().items())
    statuses: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    deadline = time.monotonic() + duration

    async def client(i: int) -> None:
        conn = RawHttpConn(host, port)
        n = i
        while time.monotonic() < deadline:
            kind, body = bodies[n % len(bodies)]
            headers = MODERN_HEADERS if n % 2 else JSON_HEADERS
            n += 1
            try:
                status, _, _ = await conn.request("POST", path, headers, body)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
                await conn.close()
                continue
            statuses[str(status)] += 1
            sent[kind] += 1
        await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"statuses": dict(statuses), "sent": dict(sent)}


def garbage_process(host: str, port: int, path: str, clients: int, duration: float, out: Any) -> None:
    """Entry point of the separate process that sends the garbage (so its CPU is not the probe's)."""
    out.put(asyncio.run(_garbage(host, port, path, clients, duration)))


async def probe_healthz(host: str, port: int, duration: float, interval: float) -> tuple[list[float], int]:
    """GET /healthz on one keep-alive connection every ``interval`` s; latencies (ms) and failures."""
    conn = RawHttpConn(host, port)
    lat: list[float] = []
    failed = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            status, _, _ = await asyncio.wait_for(conn.request("GET", "/healthz", {}), 30)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            failed += 1
            await conn.close()
            continue
        took = time.perf_counter() - t0
        if status == 200:
            lat.append(took * 1000)
        else:
            failed += 1
        await asyncio.sleep(max(0.0, interval - took))
    await conn.close()
    return lat, failed


async def _cost_by_kind(server: HttpServer, per_kind: int) -> dict[str, float]:
    """Server CPU (ms) per worst-case body of each kind, sent one at a time on one connection."""
    out: dict[str, float] = {}
    conn = RawHttpConn(server.host, server.port)
    for kind, body in worst_bodies().items():
        for headers_kind, headers in (("", JSON_HEADERS), (" 2026", MODERN_HEADERS)):
            cpu0 = cpu_seconds(server.child.pid)
            for _ in range(per_kind):
                await conn.request("POST", server.path, headers, body)
            out[kind + headers_kind] = 1000 * (cpu_seconds(server.child.pid) - cpu0) / per_kind
    await conn.close()
    return out


def phase_garbage(server: HttpServer, args: argparse.Namespace) -> Json:
    idle_lat, idle_failed = asyncio.run(probe_healthz(server.host, server.port, args.probe_seconds, 0.01))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    worker = ctx.Process(
        target=garbage_process,
        args=(server.host, server.port, server.path, args.garbage_clients, args.probe_seconds + 1.5, out),
    )
    worker.start()
    try:
        time.sleep(1.0)  # the garbage clients are connected and busy before the probe starts
        cpu0, t0 = cpu_seconds(server.child.pid), time.monotonic()
        lat, failed = asyncio.run(probe_healthz(server.host, server.port, args.probe_seconds, 0.01))
        server_cpu = (cpu_seconds(server.child.pid) - cpu0) / (time.monotonic() - t0)
        garbage = out.get(timeout=60)
    finally:
        worker.join(30)
        if worker.is_alive():
            worker.terminate()
    total = sum(garbage["sent"].values())
    cost = asyncio.run(_cost_by_kind(server, args.per_kind))
    return {
        "cpu_ms_by_kind": cost,
        "idle": {
            "p50": pct(idle_lat, 50),
            "p99": pct(idle_lat, 99),
            "max": max(idle_lat),
            "failed": idle_failed,
        },
        "loaded": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat), "failed": failed},
        "probes": len(lat),
        "garbage_per_s": total / (args.probe_seconds + 1.5),
        "garbage": garbage,
        "server_cpu_share": server_cpu,
    }


# --------------------------------------------------------------------------- (b) initialize flood


async def _flood(server: HttpServer, total: int, concurrency: int, distinct_keys: bool) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    sessions = 0
    queue = iter(range(total))

    async def client() -> None:
        nonlocal sessions
        conn = RawHttpConn(server.host, server.port)
        for i in queue:
            headers = dict(JSON_HEADERS)
            if distinct_keys:
                headers["danube-api-key"] = f"flood-{secrets.token_hex(8)}"
            try:
                status, resp_headers, _ = await conn.request(
                    "POST", server.path, headers, json.dumps(initialize_msg(i)).encode()
                )
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
                await conn.close()
                continue
            statuses[str(status)] += 1
            sessions += status == 200 and "mcp-session-id" in resp_headers
        await conn.close()

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"statuses": dict(statuses), "sessions": sessions, "seconds": time.monotonic() - t0}


async def _fresh_client_status(server: HttpServer) -> int:
    conn = RawHttpConn(server.host, server.port)
    try:
        headers = {**JSON_HEADERS, "danube-api-key": "fresh-client-key"}
        status, _, _ = await conn.request(
            "POST", server.path, headers, json.dumps(initialize_msg(1)).encode()
        )
        return status
    finally:
        await conn.close()


def rss_mib(pid: int) -> float:
    return proc_status_kib(pid) / 1024


def phase_flood(cmd: ServerCmd, env: dict[str, str], args: argparse.Namespace, distinct_keys: bool) -> Json:
    with http_server(cmd, env) as server:
        asyncio.run(probe_healthz(server.host, server.port, 0.3, 0.01))  # warm: first request paths loaded
        before = rss_mib(server.child.pid)
        result = asyncio.run(_flood(server, args.flood, args.flood_concurrency, distinct_keys))
        after = rss_mib(server.child.pid)
        peak = proc_status_kib(server.child.pid, "VmHWM") / 1024
        fresh = asyncio.run(_fresh_client_status(server))
        stderr = server.child.stderr_size()
    return result | {
        "rss_before": before,
        "rss_after": after,
        "rss_peak": peak,
        "fresh": fresh,
        "stderr": stderr,
    }


# --------------------------------------------------------------------------- (c) the connection cap

DRIP_HEAD = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-drip: "
HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


async def _open_drips(
    host: str, port: int, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    out = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(DRIP_HEAD)
        out.append((reader, writer))
    return out


async def _first_answer(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """The first bytes the server sends (b"" when it closes), or None if nothing within ``timeout``."""
    try:
        return await asyncio.wait_for(reader.read(64), timeout)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""


def _classify(data: bytes | None) -> str:
    if data is None:
        return "held"
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode()
    return "closed"


async def _healthz_once(host: str, port: int, timeout: float) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(HEALTHZ)
        data = await _first_answer(reader, timeout)
    finally:
        writer.close()
    return int(data[9:12]) if data and data.startswith(b"HTTP/1.1 ") else None


async def _until_healthz(host: str, port: int, limit: float) -> float:
    """Seconds until GET /healthz on a new connection answers 200 (nan if not within ``limit``)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if await _healthz_once(host, port, 2.0) == 200:
            return time.monotonic() - t0
        await asyncio.sleep(0.005)
    return NAN


def soft_nofile(pid: int) -> int | None:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return int(value) if value.isdigit() else None
    return None


async def _cap(server: HttpServer, cap: int, extra: int, read_timeout: float) -> Json:
    host, port, pid = server.host, server.port, server.child.pid
    stderr0 = server.child.stderr_size()
    rss_idle = rss_mib(pid)
    drips = await _open_drips(host, port, cap + extra)
    # Refusals come at once; a drip still unanswered after a third of the read deadline is held.
    window = read_timeout / 3
    answers = await asyncio.gather(*(_first_answer(r, window) for r, _ in drips))
    kinds = Counter(_classify(a) for a in answers)
    rss_full = rss_mib(pid)
    fresh = await _healthz_once(host, port, window / 2)
    for _, w in drips:
        w.close()
    recovery = await _until_healthz(host, port, 30)
    # Drips that never leave: the server closes them itself after the read deadline.
    drips = await _open_drips(host, port, cap or extra)
    t0 = time.monotonic()
    closed = await asyncio.gather(*(_first_answer(r, 2 * read_timeout + 5) for r, _ in drips))
    held_for = time.monotonic() - t0
    kinds_deadline = Counter(_classify(a) for a in closed)
    for _, w in drips:
        w.close()
    after_deadline = await _until_healthz(host, port, 30)
    return {
        "answers": dict(kinds),
        "fresh_client": fresh,
        "rss_idle": rss_idle,
        "rss_full": rss_full,
        "recovery_s": recovery,
        "deadline_answers": dict(kinds_deadline),
        "deadline_held_s": held_for,
        "healthz_after_deadline_s": after_deadline,
        "stderr": server.child.stderr_size() - stderr0,
        "stderr_tail": server.child.stderr_text(600),
    }


def phase_cap(cmd: ServerCmd, env: dict[str, str], args: argparse.Namespace) -> Json:
    # --cap 0: the server's own defaults, no flags (also for a build that has no such flags).
    flags = ("--max-connections", str(args.cap), "--read-timeout", str(args.read_timeout)) if args.cap else ()
    limit_cmd = ServerCmd(cmd.label, cmd.argv, (*cmd.http_args, *flags), cmd.http_path)
    with http_server(limit_cmd, env) as server:
        asyncio.run(probe_healthz(server.host, server.port, 0.3, 0.01))
        return asyncio.run(_cap(server, args.cap, args.cap_extra, args.read_timeout)) | {
            "soft_nofile": soft_nofile(server.child.pid)
        }


# --------------------------------------------------------------------------- the script


def raise_own_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--garbage-clients", type=int, default=8, help="clients sending worst-case bodies")
    parser.add_argument(
        "--probe-seconds", type=float, default=5.0, help="seconds of /healthz probing, each side"
    )
    parser.add_argument(
        "--per-kind", type=int, default=100, help="bodies per kind for the CPU-per-body figures"
    )
    parser.add_argument("--flood", type=int, default=10_000, help="initialize requests per flood")
    parser.add_argument("--flood-concurrency", type=int, default=16, help="flood connections")
    parser.add_argument(
        "--cap", type=int, default=2000, help="--max-connections for the cap phase (the default)"
    )
    parser.add_argument("--cap-extra", type=int, default=200, help="drip connections over the cap")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="--read-timeout for the cap phase")
    parser.add_argument(
        "--phases", nargs="+", choices=("garbage", "flood", "cap"), default=["garbage", "flood", "cap"]
    )


def _fig(value: float, unit: str, ref: float = NAN, **extra: Any) -> Json:
    return figure(value, ref, unit, value / ref if ref == ref and ref else NAN, **extra)


def run(args: argparse.Namespace) -> Json:
    raise_own_nofile()
    argv = parse_cmd(args.server)
    if args.server == REFERENCE_CMD or ("danube_mcp" not in " ".join(argv) and "danube-mcp" not in argv[0]):
        return {
            "figures": {},
            "skipped": "hardening measures danube-mcp only: pass --server 'python -m danube_mcp'",
        }
    cmd = ServerCmd("ours", argv, tuple(args.http_args.split()), args.http_path)
    figures: dict[str, Json] = {}
    raw: Json = {"loadavg_start": loadavg()}
    with upstream(args.upstream) as up:
        env = server_env(up.url, args.env)
        env.pop("DANUBE_API_KEY", None)  # no server key: a flood without a key opens sessions, calls fail
        env["DANUBE_MCP_LOG_LEVEL"] = "WARNING"
        if "garbage" in args.phases:
            with http_server(cmd, env) as server:
                stderr0 = server.child.stderr_size()
                g = phase_garbage(server, args)
                stderr = server.child.stderr_size() - stderr0
            raw["garbage"] = g
            n = args.garbage_clients
            for q in ("p50", "p99", "max"):
                figures[f"/healthz {q}, {n} clients sending worst-case bodies (ref: idle)"] = _fig(
                    g["loaded"][q], "ms", g["idle"][q]
                )
            figures["/healthz failures under worst-case bodies"] = _fig(g["loaded"]["failed"], "count")
            figures["worst-case bodies refused per second"] = _fig(g["garbage_per_s"], "1/s")
            figures["server CPU while refusing them"] = _fig(100 * g["server_cpu_share"], "% core")
            figures["stderr during the garbage phase"] = _fig(stderr, "B")
            for kind, ms in g["cpu_ms_by_kind"].items():
                figures[f"server CPU per refused body: {kind}"] = _fig(ms, "ms")
        if "flood" in args.phases:
            for distinct, label in ((False, "no key"), (True, "a new key each")):
                f = phase_flood(cmd, env, args, distinct)
                raw[f"flood ({label})"] = f
                figures[f"sessions opened by {args.flood} initialize ({label})"] = _fig(
                    f["sessions"], "count", statuses=f["statuses"]
                )
                figures[f"RSS growth over the flood ({label})"] = _fig(
                    f["rss_after"] - f["rss_before"], "MiB", rss_before=f["rss_before"]
                )
                figures[f"peak RSS during the flood ({label})"] = _fig(f["rss_peak"], "MiB")
                figures[f"initialize answered per second ({label})"] = _fig(args.flood / f["seconds"], "1/s")
                figures[f"a fresh client's initialize after it ({label})"] = _fig(f["fresh"], "HTTP status")
        if "cap" in args.phases:
            c = phase_cap(cmd, env, args)
            raw["cap"] = c
            a = c["answers"]
            cap_text = f"cap {args.cap}" if args.cap else "server defaults"
            figures[f"drip connections held of {args.cap + args.cap_extra} ({cap_text})"] = _fig(
                a.get("held", 0), "count", answers=a, soft_nofile=c["soft_nofile"]
            )
            figures["server's open-files limit (soft)"] = _fig(c["soft_nofile"] or NAN, "count")
            figures["drip connections over the cap answered 503"] = _fig(a.get("503", 0), "count")
            figures["drip connections over the cap closed/reset"] = _fig(a.get("closed", 0), "count")
            figures["a new client's /healthz at the cap"] = _fig(c["fresh_client"] or 0, "HTTP status")
            figures["server RSS per held drip connection"] = _fig(
                1024 * (c["rss_full"] - c["rss_idle"]) / max(1, a.get("held", 0)), "KiB"
            )
            figures["/healthz 200 again after the drips leave"] = _fig(1000 * c["recovery_s"], "ms")
            figures[
                f"drips that never leave, closed by the server after (--read-timeout {args.read_timeout:g})"
            ] = _fig(c["deadline_held_s"], "s", answers=c["deadline_answers"])
            figures["stderr during the cap phase"] = _fig(c["stderr"], "B")
    raw["loadavg_end"] = loadavg()
    return {"figures": figures, "raw": raw}


def main(argv: list[str] | None = None) -> int:
    return run_script(TITLE, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
