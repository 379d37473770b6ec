"""The commands for people that sit beside the server: ``login``, ``logout`` and ``store``.

``danube-mcp`` (cli.py) hands ``argv[0]`` and the rest of the arguments here when ``argv[0]`` is
one of :data:`COMMANDS`; everything else starts the server.
"""

from __future__ import annotations

import sys
from typing import Final

COMMANDS: Final = ("login", "logout", "store")


def dispatch(name: str, argv: list[str]) -> int:
    """Run one command and return its exit code (see each module for the codes).

    ``--help`` and argument errors end argparse with SystemExit; that becomes the return value too.
    """
    try:
        return _run(name, argv)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)


def _run(name: str, argv: list[str]) -> int:
    if name == "login":
        from danube_mcp.login import login_main

        return login_main(argv)
    if name == "logout":
        from danube_mcp.login import logout_main

        return logout_main(argv)
    if name == "store":
        from danube_mcp.store_cmd import store_main

        return store_main(argv)
    print(f"danube-mcp: unknown command {name!r}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
    return 2


def main() -> int:
    """``python -m danube_mcp.commands NAME ...``: the same as ``danube-mcp NAME ...``."""
    if len(sys.argv) < 2:
        print(f"usage: python -m danube_mcp.commands {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return dispatch(sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
