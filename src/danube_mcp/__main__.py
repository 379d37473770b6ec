"""``python -m danube_mcp``: the same as the ``danube-mcp`` command."""

from danube_mcp.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
