"""Subcommands of ``danube-mcp`` other than serving: ``login``, ``logout`` and ``store``.

``cli.main`` calls :func:`dispatch` when the first argument names one of them, before its own
argument parser runs, so each command owns its flags. Core dumps are already off by then.
"""

from __future__ import annotations

import sys


def dispatch(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` with its own arguments ``argv``; return the exit code."""
    print(f"danube-mcp: the {name} command is not available in this build", file=sys.stderr)
    return 2
