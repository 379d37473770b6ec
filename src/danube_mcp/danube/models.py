"""The request the Danube client sends and the result it returns: plain values, no MCP, no HTTP.

The tool (``danube_mcp.tool.schema``) builds these from checked arguments and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CredentialType = Literal["bearer", "api_key"]


@dataclass(frozen=True, slots=True)
class StoreRequest:
    service_id: str
    credential_type: CredentialType
    # repr=False: a request object in a traceback or log line never shows the secret.
    credential_value: str = field(repr=False)

    def to_json(self) -> dict[str, str]:
        return {
            "service_id": self.service_id,
            "credential_type": self.credential_type,
            "credential_value": self.credential_value,
        }


@dataclass(frozen=True, slots=True)
class StoreResult:
    """Danube's answer to a successful store."""

    service_id: str
    service_name: str
    credential_type: str
    stored_as: str | None = None
    notice: str | None = None
    deprecated: bool | None = None

    def structured(self, *, sandbox: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "success": True,
            "service_id": self.service_id,
            "service_name": self.service_name,
            "credential_type": self.credential_type,
        }
        if self.stored_as is not None:
            out["stored_as"] = self.stored_as
        if self.deprecated is not None:
            out["deprecated"] = self.deprecated
        if self.notice is not None:
            out["notice"] = self.notice
        if sandbox:
            out["sandbox"] = True
        return out
