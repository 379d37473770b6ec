"""The tool's arguments and result, shared by the MCP layer and the Danube client.

Validation is hand-written rather than done by pydantic or jsonschema for two reasons: the error
messages must name the field and the problem without ever quoting the value (both libraries quote
it), and it runs on every call, where a few dictionary look-ups are much cheaper than a schema walk.
"""

from __future__ import annotations

import re
from typing import Any, Final

from danube_mcp.danube.models import CredentialType, StoreRequest, StoreResult

__all__ = ["CredentialType", "StoreRequest", "StoreResult"]  # re-exported for the tool's callers
CREDENTIAL_TYPES: Final = ("bearer", "api_key")
MAX_SERVICE_ID = 256
MAX_CREDENTIAL_VALUE = 16384

# C0/C1 controls, DEL, the Unicode line and paragraph separators, and lone surrogates (which
# cannot be encoded as UTF-8).
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Argument names that are safe to quote in an error: short, letters and separators only.
_PLAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z_-]{0,31}$")

_JSON_TYPE_NAMES: Final = {
    type(None): "null",
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def credential_label(credential_type: str) -> str:
    """How a credential type reads in a sentence: 'bearer token', 'API key'."""
    return {"bearer": "bearer token", "api_key": "API key"}.get(
        credential_type, f"{credential_type} credential"
    )


class ArgumentError(ValueError):
    """Invalid tool arguments. The message names fields and problems, never values."""


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), "value")


ARGUMENT_NAMES: Final = ("service_id", "credential_type", "credential_value")


def parse_arguments(arguments: object, *, value_optional: bool = False) -> StoreRequest:
    """Validate raw ``tools/call`` arguments and build the request.

    All problems are collected into one message so a model can fix every field in one retry.
    """
    if not isinstance(arguments, dict):
        raise ArgumentError(f"arguments must be an object, got {_json_type(arguments)}")
    problems: list[str] = []
    extra = sorted(str(k) for k in arguments if k not in ARGUMENT_NAMES)
    if extra:
        # Only plain word-like names are quoted back: a confused model might use a secret as a key.
        plain = [k for k in extra if _PLAIN_NAME.match(k)]
        shown = ", ".join(repr(k) for k in plain[:5])
        others = len(extra) - min(len(plain), 5)
        if others:
            shown += (", " if shown else "") + f"{others} other(s) not shown"
        problems.append(f"unexpected argument(s): {shown} (allowed: {', '.join(ARGUMENT_NAMES)})")

    service_id = arguments.get("service_id")
    if service_id is None:
        problems.append("service_id: required")
    elif not isinstance(service_id, str):
        problems.append(f"service_id: must be a string, got {_json_type(service_id)}")
    else:
        service_id = service_id.strip()
        if not service_id:
            problems.append("service_id: must not be empty")
        elif len(service_id) > MAX_SERVICE_ID:
            problems.append(f"service_id: must be at most {MAX_SERVICE_ID} characters")
        elif _BAD_CHARS.search(service_id) or any(c.isspace() for c in service_id):
            problems.append("service_id: must not contain whitespace or control characters")

    credential_type = arguments.get("credential_type")
    if credential_type is None:
        problems.append("credential_type: required, one of 'bearer', 'api_key'")
    elif not isinstance(credential_type, str):
        problems.append(f"credential_type: must be a string, got {_json_type(credential_type)}")
    elif credential_type not in CREDENTIAL_TYPES:
        # The given value is not echoed: a confused model may have put the secret here.
        hint = (
            " (OAuth services are connected in the Danube dashboard, not with this tool)"
            if "oauth" in credential_type.lower()
            else ""
        )
        problems.append(f"credential_type: must be 'bearer' or 'api_key'{hint}")

    value = arguments.get("credential_value")
    if value is None:
        if not value_optional:
            problems.append("credential_value: required")
    elif not isinstance(value, str):
        problems.append(f"credential_value: must be a string, got {_json_type(value)}")
    elif not value.strip():
        problems.append("credential_value: must not be empty")
    elif len(value) > MAX_CREDENTIAL_VALUE:
        problems.append(f"credential_value: must be at most {MAX_CREDENTIAL_VALUE} characters")
    elif _BAD_CHARS.search(value):
        problems.append(
            "credential_value: contains a control character, line break or invalid Unicode; "
            "ask the user to copy the credential again"
        )
    elif value != value.strip():
        problems.append("credential_value: has leading or trailing whitespace; remove it")

    if problems:
        raise ArgumentError("; ".join(problems))
    return StoreRequest(
        service_id=service_id,  # type: ignore[arg-type]
        credential_type=credential_type,  # type: ignore[arg-type]
        credential_value=value if isinstance(value, str) else "",
    )


def input_schema(*, value_optional: bool = False) -> dict[str, Any]:
    required = ["service_id", "credential_type"] if value_optional else list(ARGUMENT_NAMES)
    return {
        "type": "object",
        "properties": {
            "service_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_SERVICE_ID,
                "description": (
                    "The Danube service to store the credential for, for example 'svc_openai_001' "
                    "or a service UUID, as shown in the Danube dashboard or service catalog."
                ),
            },
            "credential_type": {
                "type": "string",
                "enum": list(CREDENTIAL_TYPES),
                "description": "'bearer' for a bearer token, 'api_key' for an API key.",
            },
            "credential_value": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_CREDENTIAL_VALUE,
                "writeOnly": True,
                "format": "password",
                "description": (
                    "The secret exactly as the user gave it, or a reference of the form "
                    "'vault://<mount>/<path>#<field>' or 'env://<NAME>'. It is never returned."
                ),
            },
        },
        "required": required,
        "additionalProperties": False,
    }


OUTPUT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "service_id": {"type": "string"},
        "service_name": {"type": "string"},
        "credential_type": {"type": "string"},
        "stored_as": {
            "type": "string",
            "description": "'value' (the secret is stored encrypted) or 'reference' (a vault/env reference)",
        },
        "deprecated": {"type": "boolean"},
        "notice": {"type": "string"},
        "sandbox": {"type": "boolean", "description": "true when served by the local sandbox"},
        "status": {
            "type": "string",
            "enum": ["awaiting_user_input"],
            "description": "only when success is false: the user must enter the value on input_url",
        },
        "input_url": {
            "type": "string",
            "description": "a one-time link for the user (secure input); it never carries the secret",
        },
        "expires_in_seconds": {"type": "integer", "description": "how long input_url stays valid"},
    },
    "required": ["success", "service_id", "credential_type"],
}
