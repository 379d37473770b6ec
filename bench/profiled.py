"""Run a Python module or script under cProfile and write the stats when it exits (SIGTERM included).

    python bench/profiled.py OUT.prof -m danube_mcp --transport streamable-http --port 0
    python bench/profiled.py OUT.prof bench/reference_server.py --transport streamable-http --port 0

With ``--on-signal`` profiling starts only at SIGUSR1 and stops (writing OUT) at SIGUSR2, so start-up and
warm-up stay out of the figures. Only for the bench (``http_compare.py --profile DIR`` uses it); cProfile roughly doubles the CPU per call,
so compare the shares of the total, not the times, with an unprofiled run. Reads with ``pstats``:
``python -c "import pstats; pstats.Stats('OUT.prof').sort_stats('tottime').print_stats(30)"``.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys


def main() -> None:
    out, *rest = sys.argv[1:]
    on_signal = rest[0] == "--on-signal"
    if on_signal:
        rest = rest[1:]
    prof = cProfile.Profile()

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    def start_profile(signum: int, frame: object) -> None:
        prof.enable()

    def stop_profile(signum: int, frame: object) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, start_profile)
    signal.signal(signal.SIGUSR2, stop_profile)
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        target, as_module = rest[1], True
    else:
        sys.argv = rest
        target, as_module = rest[0], False
    if not on_signal:
        prof.enable()
    try:
        if as_module:
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
    finally:
        if not on_signal:
            prof.disable()
            prof.dump_stats(out)


if __name__ == "__main__":
    main()
