"""The documented ASGI entry point: ``uvicorn --factory danube_mcp.http:create_app``.

The application itself lives in :mod:`danube_mcp.transports.http`; this name stays stable for
deployments.
"""

from danube_mcp.transports.http import DanubeHttpApp, create_app

__all__ = ["DanubeHttpApp", "create_app"]
