"""The exception hierarchy users catch. Every error NullSpend raises derives from NullSpendError.

NullSpendError
├── PricingError: UnpricedModelError, PricingFileError
├── ConnectionFailedError            the server could not be reached
└── ApiError                         the server (or the embedded engine) refused, with a code
    ├── AuthenticationError, PermissionDeniedError, ValidationError, NotFoundError,
    │   ConflictError, PayloadTooLargeError, RateLimitedError
    ├── DeniedError                  enforcement said no before any provider was called
    │   ├── BudgetExceededError, CustomerBudgetExceededError, TagBudgetExceededError
    │   ├── VelocityExceededError, SessionLimitExceededError, UnpricedModelDeniedError
    │   └── UnmeteredRouteError      a tracked client's request NullSpend cannot price
    └── BudgetUnavailableError, UpstreamUnavailableError, InternalServerError
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class NullSpendError(Exception):
    """Base class of every NullSpend error."""


class PricingError(NullSpendError):
    """A price could not be determined or loaded."""


class UnpricedModelError(PricingError, LookupError):
    """The model is not in the pricing catalog: its cost is unknown, never assumed to be zero."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {model!r} is not in the pricing catalog; add it with a pricing override file "
            "(NULLSPEND_PRICING_FILE)"
        )
        self.model = model


class PricingFileError(PricingError, ValueError):
    """A catalog or override file is unreadable or invalid."""


class ErrorCode(StrEnum):
    """Every error code NullSpend puts on the wire, in ``{"error": {"code", ...}}`` bodies."""

    AUTHENTICATION_REQUIRED = "authentication_required"
    FORBIDDEN = "forbidden"
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    BUDGET_EXCEEDED = "budget_exceeded"
    CUSTOMER_BUDGET_EXCEEDED = "customer_budget_exceeded"
    TAG_BUDGET_EXCEEDED = "tag_budget_exceeded"
    VELOCITY_EXCEEDED = "velocity_exceeded"
    SESSION_LIMIT_EXCEEDED = "session_limit_exceeded"
    UNPRICED_MODEL = "unpriced_model"
    BUDGET_UNAVAILABLE = "budget_unavailable"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    INTERNAL_ERROR = "internal_error"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.AUTHENTICATION_REQUIRED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.CUSTOMER_BUDGET_EXCEEDED: 429,
    ErrorCode.TAG_BUDGET_EXCEEDED: 429,
    ErrorCode.VELOCITY_EXCEEDED: 429,
    ErrorCode.SESSION_LIMIT_EXCEEDED: 429,
    ErrorCode.UNPRICED_MODEL: 429,
    ErrorCode.BUDGET_UNAVAILABLE: 503,
    ErrorCode.UPSTREAM_UNAVAILABLE: 502,
    ErrorCode.INTERNAL_ERROR: 500,
}


class ConnectionFailedError(NullSpendError, ConnectionError):
    """The NullSpend server could not be reached, or did not answer in time."""


class ApiError(NullSpendError):
    """An error answer, ``{"error": {"code", "message", "details"}}``, as the server sent it.

    ``retry_after`` is the server's ``Retry-After`` in seconds, where waiting helps."""

    code: ErrorCode | str = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        upgrade_url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after
        self.upgrade_url = upgrade_url


class AuthenticationError(ApiError):
    code = ErrorCode.AUTHENTICATION_REQUIRED


class PermissionDeniedError(ApiError):
    code = ErrorCode.FORBIDDEN


class ValidationError(ApiError, ValueError):
    code = ErrorCode.VALIDATION_ERROR


class NotFoundError(ApiError, LookupError):
    code = ErrorCode.NOT_FOUND


class ConflictError(ApiError):
    code = ErrorCode.CONFLICT


class PayloadTooLargeError(ApiError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class RateLimitedError(ApiError):
    code = ErrorCode.RATE_LIMITED


class DeniedError(ApiError):
    """Enforcement refused the call before it reached a provider: nothing was spent."""


class BudgetExceededError(DeniedError):
    code = ErrorCode.BUDGET_EXCEEDED


class CustomerBudgetExceededError(DeniedError):
    code = ErrorCode.CUSTOMER_BUDGET_EXCEEDED


class TagBudgetExceededError(DeniedError):
    code = ErrorCode.TAG_BUDGET_EXCEEDED


class VelocityExceededError(DeniedError):
    code = ErrorCode.VELOCITY_EXCEEDED


class SessionLimitExceededError(DeniedError):
    code = ErrorCode.SESSION_LIMIT_EXCEEDED


class UnpricedModelDeniedError(DeniedError):
    """The model is not in the pricing catalog and unpriced calls are denied."""

    code = ErrorCode.UNPRICED_MODEL


class UnmeteredRouteError(DeniedError):
    """A tracked provider client's request that may cost money NullSpend cannot price (a
    batch, embeddings, images, audio), refused before it was sent: a budget could not hold
    it. Its code is the proxy's answer to the same request, ``not_found``."""

    code = ErrorCode.NOT_FOUND


class BudgetUnavailableError(ApiError):
    """Budgets could not be checked (storage down): the call was not made (fail closed)."""

    code = ErrorCode.BUDGET_UNAVAILABLE


class UpstreamUnavailableError(ApiError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class InternalServerError(ApiError):
    code = ErrorCode.INTERNAL_ERROR


API_ERRORS: dict[ErrorCode, type[ApiError]] = {
    ErrorCode(cls.code): cls
    for cls in (
        AuthenticationError,
        PermissionDeniedError,
        ValidationError,
        NotFoundError,
        ConflictError,
        PayloadTooLargeError,
        RateLimitedError,
        BudgetExceededError,
        CustomerBudgetExceededError,
        TagBudgetExceededError,
        VelocityExceededError,
        SessionLimitExceededError,
        UnpricedModelDeniedError,
        BudgetUnavailableError,
        UpstreamUnavailableError,
        InternalServerError,
    )
}
"""The exception for each error code: every code has one (a test checks)."""


def api_error(
    code: str,
    message: str,
    *,
    status: int | None = None,
    details: Mapping[str, Any] | None = None,
    retry_after: float | None = None,
    upgrade_url: str | None = None,
) -> ApiError:
    """The typed exception for ``code``; a code this version does not know is a plain
    ``ApiError`` that still carries it."""
    try:
        cls = API_ERRORS[ErrorCode(code)]
    except ValueError:
        cls = ApiError
    return cls(
        message,
        code=code,
        status=status,
        details=details,
        retry_after=retry_after,
        upgrade_url=upgrade_url,
    )
