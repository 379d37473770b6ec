"""Constants shared by the sandbox modules (no imports, so anything may use them cheaply)."""

from typing import Final

#: The documented demo key the sandbox accepts when no ``--api-key`` is given.
DEMO_API_KEY: Final = "sandbox-demo-key"

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765

#: Environment variable holding the base64 of the 32-byte encryption key.
KEY_ENV_VAR: Final = "DANUBE_SANDBOX_KEY"

#: Header that carries the caller's Danube API key.
API_KEY_HEADER: Final = "danube-api-key"

#: Limits on ``POST /v1/credentials/store``.
MAX_BODY_BYTES: Final = 64 * 1024
MAX_SERVICE_ID_CHARS: Final = 256
MAX_CREDENTIAL_VALUE_CHARS: Final = 16384

#: Credential types the store endpoint accepts (OAuth goes through the dashboard).
CREDENTIAL_TYPES: Final = frozenset({"bearer", "api_key"})
