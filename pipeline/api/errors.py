"""JSON errors with stable machine codes. Every failure leaves in one shape, Sanic's own ones (unknown
route, oversized body, malformed HTTP) and unexpected exceptions included, and never with a traceback:

    {"error": {"code": "task_not_found", "message": "...", "type": "not_found_error"}, "detail": "..."}

`error` is shaped like OpenAI's error object so its clients show our message; `detail` is where
FastAPI-style clients of the original API look. The message follows `Accept-Language`.
"""

from __future__ import annotations

import logging
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import json

from pipeline.api.i18n import DEFAULT_LANGUAGE, negotiate, text

log = logging.getLogger(__name__)

_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}

# Sanic raises these itself, before or around our handlers.
_SANIC_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """An expected failure: `code` is stable, `params` fill the message template of that code."""

    def __init__(self, status: int, code: str, /, *, headers: dict[str, str] | None = None, **params: Any) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.params = params


def language(request: Request | None) -> str:
    if request is None:
        return DEFAULT_LANGUAGE
    lang = getattr(request.ctx, "lang", None)
    if lang is None:
        lang = request.ctx.lang = negotiate(request.headers.get("accept-language"))
    return lang


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    kind = _TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"code": code, "message": message, "type": kind}, "detail": message}


def api_error_response(request: Request | None, exc: ApiError) -> HTTPResponse:
    message = text(exc.code, language(request), **exc.params)
    if request is not None:
        request.ctx.error_code = exc.code  # counted by the metrics middleware
    return json(error_body(exc.status, exc.code, message), status=exc.status, headers=exc.headers)


def handle_exception(request: Request | None, exc: BaseException) -> HTTPResponse:
    if isinstance(exc, ApiError):
        return api_error_response(request, exc)
    if isinstance(exc, SanicException):
        status = exc.status_code or 500
        if status == 413:
            limit = request.app.config.REQUEST_MAX_SIZE if request is not None else 0
            return api_error_response(request, ApiError(413, "file_too_large", limit=limit))
        if status == 503:
            return api_error_response(request, ApiError(503, "service_unavailable", reason=str(exc)))
        if status < 500:
            code = _SANIC_CODES.get(status, "bad_request")
            return api_error_response(request, ApiError(status, code, headers=dict(exc.headers or {})))
    path = request.path if request is not None else "?"
    log.error("unhandled error on %s", path, exc_info=(type(exc), exc, exc.__traceback__))
    return api_error_response(request, ApiError(500, "internal_error"))


def install(app: Sanic) -> None:
    app.error_handler.add(Exception, handle_exception)
