"""danube-mcp: an MCP server exposing Danube's credential store as the ``store_credential`` tool."""

__version__ = "0.1.0"

__all__ = ["__version__"]
