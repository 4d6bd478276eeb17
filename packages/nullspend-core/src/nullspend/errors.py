"""The exception hierarchy users catch. Every error NullSpend raises derives from NullSpendError."""

from __future__ import annotations

from enum import StrEnum


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
