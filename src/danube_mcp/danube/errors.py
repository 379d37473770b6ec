"""The errors of a store, keyed by what went wrong.

``str(error)`` is a complete message for the model and the person: what failed and what to do. It
never holds a secret (see :mod:`danube_mcp.danube.redact`); ``repr`` shows only the status and code.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final


class DanubeError(Exception):
    """A store did not succeed. ``str(error)`` is a complete, secret-free message for the model."""

    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        upstream_message: str | None = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.upstream_message = upstream_message
        self.attempts = attempts
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, attempts={self.attempts})"


class ValidationFailed(DanubeError):
    kind = "validation"


class AuthenticationFailed(DanubeError):
    kind = "authentication"


class PermissionDenied(DanubeError):
    kind = "permission"


class NotFound(DanubeError):
    kind = "not_found"


class PaymentRequired(DanubeError):
    """402: the account cannot pay for the action. Retrying does not help; billing does."""

    kind = "payment_required"


class ConfirmationRequired(DanubeError):
    """409 ``confirmation_required``: the API key was created with ``require_confirmation`` and the
    user has to confirm the action in Danube. Never retried. The ``confirm_token`` Danube sends is
    not kept: it is a credential for the pending action, not text for the model."""

    kind = "confirmation_required"

    def __init__(self, message: str, *, expires_in: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.expires_in = expires_in


class RateLimited(DanubeError):
    kind = "rate_limited"
    retryable = True

    def __init__(self, message: str, *, plan_cap: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.plan_cap = plan_cap


class ServerError(DanubeError):
    kind = "server"


class ConnectionFailed(DanubeError):
    kind = "connection"
    retryable = True


class UpstreamTimeout(DanubeError):
    kind = "timeout"
    retryable = True


class MalformedResponse(DanubeError):
    kind = "malformed_response"


class StoreRefused(DanubeError):
    """A 2xx answer whose body says ``"success": false``."""

    kind = "refused"


class MissingApiKey(DanubeError):
    kind = "missing_api_key"


RETRY_STATUSES: Final = frozenset({502, 503, 504})


class RetryableServerError(ServerError):
    """502, 503 and 504: worth another attempt."""

    retryable = True
