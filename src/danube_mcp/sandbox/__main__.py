"""``python -m danube_mcp.sandbox``: the same as the ``danube-sandbox`` command."""

from danube_mcp.sandbox.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
