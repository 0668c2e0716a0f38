"""Every error leaves the HTTP side as one JSON shape.

``{"status": "error", "error": <code>, "detail": <text>}`` — the same shape the
bridge publishes on a device's offer topic, so a device developer parses one
format. Domain errors (:class:`~ota_core.errors.OtaError`) are translated in
exactly one handler; framework errors (unknown route, failed request
validation, missing credentials, oversized body) are rendered in the same
shape so a client never has to guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ota_core.errors import InvalidInput, OtaError, ServiceUnavailable

#: Error codes for framework-level HTTP errors that have no OtaError of their own.
_HTTP_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    416: "range-not-satisfiable",
}


def _subclasses(cls: type[OtaError]) -> Iterator[type[OtaError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def status_for_code(code: str) -> int:
    """HTTP status of the OtaError whose ``.code`` is ``code`` (500 when unknown).

    Offers built by :class:`~ota_core.offers.OfferBuilder` carry an error's code,
    not the exception, so the HTTP side maps the code back to a status here.
    """
    classes: list[type[OtaError]] = [OtaError, *_subclasses(OtaError)]
    for cls in classes:
        if cls.code == code:
            return cls.http_status
    return 500


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"status": "error", "error": code, "detail": detail, **extra}


def error_response(error: OtaError) -> JSONResponse:
    headers = {"Retry-After": "5"} if isinstance(error, ServiceUnavailable) else None
    return JSONResponse(
        error_body(error.code, error.detail), status_code=error.http_status, headers=headers
    )


def describe_request_errors(exc: RequestValidationError) -> str:
    """One line naming each bad field; the (untrusted) input is never echoed."""
    parts = []
    for item in exc.errors():
        loc = [str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path", "form")]
        parts.append(f"{'.'.join(loc) or 'request'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _ota_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OtaError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    # Bad input is a 400 with the product's error body, like every other bad input.
    assert isinstance(exc, RequestValidationError)
    return error_response(InvalidInput(describe_request_errors(exc)))


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http-error")
    return JSONResponse(
        error_body(code, str(exc.detail)),
        status_code=exc.status_code,
        headers=dict(exc.headers or {}),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OtaError, _ota_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
