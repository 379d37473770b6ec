"""The process-wide Danube client: the real API, or the in-process sandbox.

Created once per process (per worker under ``uvicorn --workers``) and shared by every MCP session
and transport; closed once at shutdown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from danube_mcp.config import Settings
from danube_mcp.danube.client import DanubeClient
from danube_mcp.danube.tls import TrustRoots, prefetch_for

logger = logging.getLogger("danube_mcp")

SANDBOX_URL = "http://danube-sandbox.invalid"


@dataclass
class Backend:
    client: DanubeClient
    sandbox: bool
    api_key_problem: str | None
    _store: Any = field(default=None, repr=False)

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None


def open_backend(
    settings: Settings, *, sandbox: bool = False, sandbox_db: str | None = None, tls: TrustRoots | None = None
) -> Backend:
    """Build the client (no I/O happens until the first call)."""
    if not sandbox:
        client = DanubeClient(
            base_url=settings.api_url,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            org_id=settings.org_id,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            call_budget=settings.call_budget,
            tls=tls if tls is not None else prefetch_for(settings.api_url),
        )
        return Backend(client, sandbox=False, api_key_problem=settings.api_key_problem)

    import httpx2

    from danube_mcp.sandbox import DEMO_API_KEY, create_app, open_store
    from danube_mcp.sandbox.cli import default_db_path

    db = sandbox_db or str(default_db_path(create_folder=True))
    store = open_store(db)
    app = create_app(store, api_keys=[DEMO_API_KEY])
    logger.warning(
        "SANDBOX MODE: credentials go to a local encrypted test database (%s), not to Danube. "
        "Nothing is stored in your Danube account.",
        db,
    )
    client = DanubeClient(
        base_url=SANDBOX_URL,
        api_key=DEMO_API_KEY,
        timeout=settings.timeout,
        max_retries=0,
        call_budget=settings.call_budget,
        transport=httpx2.ASGITransport(app=app),
    )
    return Backend(client, sandbox=True, api_key_problem=None, _store=store)
