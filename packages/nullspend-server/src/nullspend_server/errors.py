"""The error body every route answers with: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from nullspend.errors import ErrorCode
from nullspend.limits import MAX_CALL_MICRODOLLARS
from nullspend.policy.denials import Denial

log = logging.getLogger("nullspend.server")


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str
    details: dict[str, Any] | None


class ErrorBody(BaseModel):
    """Every error answer's body, as the OpenAPI description states it."""

    error: ErrorDetail


class ApiError(Exception):
    """Raised anywhere in a request: answered with its code's HTTP status and the error body."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details) if details is not None else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        """Top-level body fields beside ``error`` (``upgrade_url`` on budget denials)."""

    def response(self) -> JSONResponse:
        return error_response(self.code, self.message, self.details, self.headers, self.extra)


def estimate_above_a_call() -> ApiError:
    """What a provider request estimated above one call's most is answered, wherever the server
    estimates one (the proxy, a reservation given the request)."""
    # No figure in the answer: one from an absurd max_tokens can have too many digits for str()
    return ApiError(
        ErrorCode.VALIDATION_ERROR,
        f"the request's estimate is above one call's most, {MAX_CALL_MICRODOLLARS} µ$:"
        " check its max_tokens, n and tools' max_uses",
        {"maxMicrodollars": MAX_CALL_MICRODOLLARS},
    )


def denial_error(denial: Denial) -> ApiError:
    """A policy denial as the HTTP answer every surface gives: its code and details, the
    ``X-NullSpend-Denied`` marker, ``Retry-After`` where waiting helps, and ``upgrade_url``."""
    headers = {"X-NullSpend-Denied": "1"}
    if denial.retry_after_seconds is not None:
        headers["Retry-After"] = str(denial.retry_after_seconds)
    extra = {"upgrade_url": denial.upgrade_url} if denial.upgrade_url else None
    return ApiError(denial.code, denial.message, denial.details, headers=headers, extra=extra)


def error_response(
    code: ErrorCode,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code.value, "message": message, "details": details}, **(extra or {})}
    return JSONResponse(body, status_code=code.http_status, headers=dict(headers or {}))


def _validation_details(error: RequestValidationError) -> dict[str, Any]:
    return {
        "errors": [
            {"location": ".".join(str(part) for part in e.get("loc", ())), "message": e.get("msg")}
            for e in error.errors()
        ]
    }


# What a database that cannot be reached raises, through SQLAlchemy or the engine's direct
# SQLite path (or a pool with no connection free in time): answered 503 ``budget_unavailable``
# (fail closed).
STORAGE_UNAVAILABLE = (
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
)

_HTTP_CODES = {
    401: ErrorCode.AUTHENTICATION_REQUIRED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}


def error_response_for(error: Exception) -> JSONResponse:
    """The answer to an exception a request raised: the one mapping the API routes (through
    FastAPI's handlers) and the bare proxy app share."""
    if isinstance(error, ApiError):
        return error.response()
    if isinstance(error, RequestValidationError):
        return error_response(
            ErrorCode.VALIDATION_ERROR, "the request is invalid", _validation_details(error)
        )
    if isinstance(error, StarletteHTTPException):
        code = _HTTP_CODES.get(error.status_code, ErrorCode.VALIDATION_ERROR)
        if error.status_code == 405:
            return error_response(code, "method not allowed on this path", None)
        return error_response(code, str(error.detail), None)
    if isinstance(error, DataError):
        # A value the database refuses that no check before it caught: the request's, as a rule
        # (the statement is rolled back: nothing is half written).
        log.warning("a value the database refused: %s", error.orig)
        return error_response(
            ErrorCode.VALIDATION_ERROR, "a value in the request cannot be stored", None
        )
    if isinstance(error, STORAGE_UNAVAILABLE):
        # The database cannot be reached: fail closed, with an answer a client can retry on.
        log.error("storage unavailable: %s", error)
        return error_response(
            ErrorCode.BUDGET_UNAVAILABLE,
            "storage is unavailable; retry later",
            None,
            {"Retry-After": "1"},
        )
    log.exception("unexpected error", exc_info=error)
    return error_response(ErrorCode.INTERNAL_ERROR, "internal error", None)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(_request: Request, error: Exception) -> JSONResponse:
        return error_response_for(error)

    # Each type named: Starlette answers a bare ``Exception`` and then raises it again.
    for error_type in (
        ApiError,
        RequestValidationError,
        StarletteHTTPException,
        *STORAGE_UNAVAILABLE,
        Exception,
    ):
        app.add_exception_handler(error_type, handle)
