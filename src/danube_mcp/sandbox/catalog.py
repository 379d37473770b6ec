"""The sandbox's service catalog: built-in entries plus optional entries from a JSON file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from danube_mcp.sandbox.constants import MAX_SERVICE_ID_CHARS


class CatalogError(ValueError):
    """A services file could not be read or is not a valid catalog."""


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    #: False for OAuth-only services: their credentials go through the dashboard, never the store endpoint.
    requires_credentials: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "requires_credentials": self.requires_credentials}


#: The documented example service.
DEMO_SERVICE_ID: Final = "svc_openai_001"
#: A built-in service whose credentials can only be connected through the dashboard (OAuth).
OAUTH_ONLY_SERVICE_ID: Final = "svc_google_drive_001"

BUILTIN_SERVICES: Final[tuple[Service, ...]] = (
    Service(DEMO_SERVICE_ID, "OpenAI"),
    Service("svc_anthropic_001", "Anthropic"),
    Service("svc_github_001", "GitHub"),
    Service("svc_stripe_001", "Stripe"),
    Service("3f0c1a52-8d4e-4b8e-9a4c-2d5b7e1f6a90", "Linear"),
    Service("9b2e7d4c-1a3f-4c6e-8b5d-0e7f2a9c3d18", "Notion"),
    Service(OAUTH_ONLY_SERVICE_ID, "Google Drive", requires_credentials=False),
)


def build_catalog(extra: Iterable[Service] = ()) -> dict[str, Service]:
    """The built-in catalog, with ``extra`` entries added or replacing built-ins of the same id."""
    catalog = {service.id: service for service in BUILTIN_SERVICES}
    for service in extra:
        catalog[service.id] = service
    return catalog


def lookup(catalog: Mapping[str, Service], service_id: str) -> Service | None:
    """Find a service by id: exact match first, then case-insensitively (UUIDs are often upper-cased)."""
    found = catalog.get(service_id)
    if found is not None:
        return found
    folded = service_id.casefold()
    matches = [service for key, service in catalog.items() if key.casefold() == folded]
    return matches[0] if len(matches) == 1 else None


def parse_services(data: object, *, source: str = "services") -> list[Service]:
    """Validate a decoded catalog document: a list of service objects, or ``{"services": [...]}``."""
    if isinstance(data, dict):
        if "services" not in data:
            raise CatalogError(f'{source}: expected a JSON list or an object with a "services" list')
        data = data["services"]
    if not isinstance(data, list):
        raise CatalogError(f'{source}: expected a JSON list or an object with a "services" list')
    services: list[Service] = []
    for index, entry in enumerate(data):
        where = f"{source}: entry {index}"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: expected an object")
        service_id = entry.get("id")
        if not isinstance(service_id, str) or not service_id.strip():
            raise CatalogError(f'{where}: "id" must be a non-empty string')
        service_id = service_id.strip()
        if len(service_id) > MAX_SERVICE_ID_CHARS:
            raise CatalogError(f'{where}: "id" is longer than {MAX_SERVICE_ID_CHARS} characters')
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise CatalogError(f'{where}: "name" must be a non-empty string')
        requires = entry.get("requires_credentials", True)
        if not isinstance(requires, bool):
            raise CatalogError(f'{where}: "requires_credentials" must be true or false')
        services.append(Service(service_id, name.strip(), requires))
    return services


def load_services_file(path: str | Path) -> list[Service]:
    """Read and validate a services JSON file; any problem raises :class:`CatalogError`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read services file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"services file {path} is not valid JSON: {exc}") from None
    return parse_services(data, source=f"services file {path}")
