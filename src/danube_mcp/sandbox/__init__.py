"""A local Danube-compatible credentials API ("the sandbox") for tests, demos and newcomers.

Import-light: the uvicorn-based command line lives in :mod:`danube_mcp.sandbox.cli` and is not imported here.

In-process use (no lifespan needed, so it works under ``httpx2.ASGITransport``)::

    store = open_store(":memory:")
    app = create_app(store, api_keys=[DEMO_API_KEY])
    ...
    await store.aclose()
"""

from danube_mcp.sandbox.app import ApiError, create_app
from danube_mcp.sandbox.catalog import (
    BUILTIN_SERVICES,
    DEMO_SERVICE_ID,
    OAUTH_ONLY_SERVICE_ID,
    CatalogError,
    Service,
    build_catalog,
    load_services_file,
)
from danube_mcp.sandbox.constants import API_KEY_HEADER, DEMO_API_KEY, KEY_ENV_VAR
from danube_mcp.sandbox.errors import (
    SandboxError,
    SandboxFileError,
    SandboxIntegrityError,
    SandboxKeyError,
    SandboxStoreError,
)
from danube_mcp.sandbox.store import CredentialInfo, CredentialStore, PutResult, classify_value, open_store

__all__ = [
    "API_KEY_HEADER",
    "BUILTIN_SERVICES",
    "DEMO_API_KEY",
    "DEMO_SERVICE_ID",
    "KEY_ENV_VAR",
    "OAUTH_ONLY_SERVICE_ID",
    "ApiError",
    "CatalogError",
    "CredentialInfo",
    "CredentialStore",
    "PutResult",
    "SandboxError",
    "SandboxFileError",
    "SandboxIntegrityError",
    "SandboxKeyError",
    "SandboxStoreError",
    "Service",
    "build_catalog",
    "classify_value",
    "create_app",
    "load_services_file",
    "open_store",
]
