"""Memory over stdio: RSS idle (after initialize + tools/list) and RSS growth over many calls (VmRSS from
/proc/<pid>/status). Both servers are driven at once, chunk by chunk, each with a few requests in flight."""

from __future__ import annotations

import argparse
import time

from _common import (
    Json,
    StdioClient,
    call_ok,
    figure,
    median,
    proc_status_kib,
    run_script,
    server_env,
    servers_from_args,
    stdio_server,
    upstream,
)

TITLE = "memory (stdio)"
SIDES = ("ours", "ref")


def rss_mib(client: StdioClient, reads: int = 5) -> float:
    """Median of a few VmRSS reads 20 ms apart, in MiB."""
    values = []
    for _ in range(reads):
        values.append(proc_status_kib(client.child.pid) / 1024)
        time.sleep(0.02)
    return median(values)


def drive(clients: dict[str, StdioClient], calls: int, window: int) -> dict[str, int]:
    """`calls` calls on every server, `window` in flight each, all servers busy at once; returns failures."""
    failed = dict.fromkeys(clients, 0)
    done = 0
    while done < calls:
        n = min(window, calls - done)
        sent = {side: c.send_calls(n) for side, c in clients.items()}
        for side, c in clients.items():
            failed[side] += sum(not call_ok(m) for m in c.read_answers(sent[side]))
        done += n
    return failed


def run(args: argparse.Namespace) -> Json:
    cmds = servers_from_args(args)
    trace: dict[str, list[tuple[int, float]]] = {s: [] for s in SIDES}
    with upstream(args.upstream) as up:
        env = server_env(up.url, args.env)
        with stdio_server(cmds["ours"], env) as a, stdio_server(cmds["ref"], env) as b:
            clients = {"ours": a, "ref": b}
            for c in clients.values():
                c.tools_list()
            time.sleep(args.settle)
            idle = {s: rss_mib(c) for s, c in clients.items()}
            failed = drive(clients, args.warmup, args.window)
            warm = {s: rss_mib(c) for s, c in clients.items()}
            done = 0
            while done < args.calls:
                n = min(args.chunk, args.calls - done)
                for side, f in drive(clients, n, args.window).items():
                    failed[side] += f
                done += n
                for s, c in clients.items():
                    trace[s].append((done, rss_mib(c, reads=1)))
            time.sleep(args.settle)
            final = {s: rss_mib(c) for s, c in clients.items()}
            hwm = {s: proc_status_kib(c.child.pid, "VmHWM") / 1024 for s, c in clients.items()}
    growth = {s: final[s] - warm[s] for s in SIDES}
    figures = {
        "idle RSS": figure(idle["ours"], idle["ref"], "MiB"),
        f"RSS after {args.warmup} warm-up calls": figure(warm["ours"], warm["ref"], "MiB"),
        f"RSS growth over {args.calls} calls": figure(growth["ours"], growth["ref"], "MiB"),
        "peak RSS (VmHWM)": figure(hwm["ours"], hwm["ref"], "MiB"),
        "failed calls": figure(failed["ours"], failed["ref"], "count", float("nan")),
    }
    return {"figures": figures, "trace_mib": trace, "calls": args.calls}


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=10_000, help="measured calls per server")
    parser.add_argument("--warmup", type=int, default=500, help="calls before the growth baseline")
    parser.add_argument("--window", type=int, default=4, help="requests in flight per server")
    parser.add_argument("--chunk", type=int, default=1000, help="calls between RSS samples")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds idle before idle/final readings")


def main(argv: list[str] | None = None) -> int:
    return run_script(TITLE, add_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
