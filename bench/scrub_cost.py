"""What the upstream-echo scrubber and the log filter cost per call (CPU microseconds, process time).

    PYTHONPATH=src python bench/scrub_cost.py [--rounds 2000] [--baseline-rev e1c95f6]

Each case builds a fresh Scrubber (one per store call, as the client does) and scrubs the texts one
answer carries. ``--baseline-rev`` also times the scrubber of an older commit (read with git show)
on the same cases, for a ratio. Nothing here asserts; a tiny run (well under a second of CPU).
"""

from __future__ import annotations

import argparse
import io
import logging
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from danube_mcp.danube import redact  # noqa: E402
from danube_mcp.logs import SECRETS, setup_logging  # noqa: E402

KEY = "sk-BENCH-KEY-7f3a9c2e41b8d6057a1c3e9f"
VALUE = "sk-proj-BENCHVALUE-0123456789abcdefghij"
NOTICE = "Plaintext credentials are deprecated; store a vault:// or env:// reference instead."
ERROR = "credential_value: the value does not look like a valid OpenAI key (expected prefix sk-)."
LONG = ("The service rejected the request because the provided credential could not be verified. " * 4)[:300]

CASES: dict[str, list[str]] = {
    "success (service_name only)": ["OpenAI"],
    "success + notice": ["OpenAI", NOTICE],
    "error message (90 chars)": [ERROR],
    "error message (300 chars)": [LONG],
}


def per_call(fn: Callable[[], object], rounds: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(rounds):
            fn()
        best = min(best, (time.process_time() - t0) / rounds)
    return best * 1e6


def load_old(rev: str) -> types.ModuleType | None:
    try:
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:src/danube_mcp/danube/redact.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("old_redact")
    exec(compile(src, "old_redact.py", "exec"), mod.__dict__)  # noqa: S102 - our own file from git
    return mod


def scrub_case(mod: types.ModuleType, texts: list[str]) -> Callable[[], object]:
    def run() -> object:
        s = mod.Scrubber((KEY, VALUE), known=("svc_openai_001", "bearer"))
        return [mod.clean_message(t, s) for t in texts]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--baseline-rev", default=None, help="git revision whose scrubber to compare with")
    args = ap.parse_args()
    old = load_old(args.baseline_rev) if args.baseline_rev else None

    print(f"{'case':32} {'now µs':>9}" + (f" {'old µs':>9} {'ratio':>6}" if old else ""))
    for name, texts in CASES.items():
        now = per_call(scrub_case(redact, texts), args.rounds)
        line = f"{name:32} {now:9.1f}"
        if old is not None:
            before = per_call(scrub_case(old, texts), args.rounds)
            line += f" {before:9.1f} {now / before:6.2f}"
        print(line)

    # The log filter: one INFO line through the handler, with and without a call's secrets held.
    buf = io.StringIO()
    setup_logging("INFO", buf)
    log = logging.getLogger("danube_mcp.bench")
    record_line = '127.0.0.1:5555 - "POST /mcp HTTP/1.1" 200'

    def plain() -> None:
        log.info("%s", record_line)
        buf.seek(0)
        buf.truncate()

    def held() -> None:
        with SECRETS.holding(VALUE, KEY):
            log.info("%s", record_line)
        buf.seek(0)
        buf.truncate()

    print(f"{'log line, no call secrets':32} {per_call(plain, args.rounds):9.1f}")
    print(f"{'log line, call secrets held':32} {per_call(held, args.rounds):9.1f}")


if __name__ == "__main__":
    main()
