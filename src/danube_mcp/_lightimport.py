"""Import only the parts of the MCP SDK that a stdio server needs.

``import mcp`` runs the SDK's ``mcp/__init__.py`` (and ``mcp/server/__init__.py``), which eagerly
import the client, FastMCP and their dependencies: about a quarter of this server's start-up, for
code a stdio server never runs. Registering plain package objects for ``mcp`` and ``mcp.server``
first lets ``import mcp.types`` and ``import mcp.server.lowlevel`` load just what they use.

Only the stdio command does this (hosts start it many times a day). If the SDK's layout ever stops
allowing it, the stubs are removed and the normal imports run instead.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

NEEDED = ("mcp.types", "mcp.server.lowlevel", "mcp.shared.message", "mcp.shared.exceptions")


def _package(name: str, path: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__package__ = name
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [path]
    module.__spec__ = spec
    return module


def import_mcp_lightly() -> bool:
    """Import the SDK modules in ``NEEDED`` without the package ``__init__`` files. True if done."""
    if "mcp" in sys.modules:
        return False
    spec = importlib.util.find_spec("mcp")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = next(iter(spec.submodule_search_locations))
    sys.modules["mcp"] = _package("mcp", root)
    sys.modules["mcp.server"] = _package("mcp.server", os.path.join(root, "server"))
    try:
        for name in NEEDED:
            importlib.import_module(name)
    except Exception:
        for name in [n for n in sys.modules if n == "mcp" or n.startswith("mcp.")]:
            del sys.modules[name]
        return False
    return True
