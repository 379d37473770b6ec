"""Process hardening done first thing at start-up: no core dumps.

A core dump holds the whole address space, the Danube API key and credentials in flight
included, and lands in a file (or a crash collector) that outlives the process. Two locks:

* ``RLIMIT_CORE`` 0 (soft and hard): the kernel writes no core file, and crash collectors that
  honour the limit (systemd-coredump, apport) keep nothing either;
* on Linux, ``prctl(PR_SET_DUMPABLE, 0)``: no core even through a piped ``core_pattern``, and
  other processes of the same user can no longer attach a debugger or read ``/proc/<pid>/mem``
  and ``/proc/<pid>/environ`` (where ``DANUBE_API_KEY`` lives).

Both are best effort: where a platform lacks them, start-up goes on.
"""

from __future__ import annotations

import contextlib
import sys

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def disable_core_dumps() -> None:
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(ImportError, OSError, AttributeError):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
