"""Every error leaves the API as JSON {"error": {"code", "message", "details"}} with a 4xx/5xx status,
and is counted by its code (moodtunes_gateway_rejections_total{code}, on the app's /metrics)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = (
            status,
            code,
            message,
            details,
            headers,
        )


def count_rejection(app, code: str) -> None:
    """One more error answer with `code` on `app`'s rejection counter (observability.instrument
    puts it on the app; an app without one counts nothing)."""
    counter = getattr(getattr(app, "state", None), "rejections", None)
    if counter is not None:
        counter.labels(code).inc()


def error_response(request: Request, status: int, code: str, message: str, details=None, headers=None):
    count_rejection(request.app, code)
    return JSONResponse(error_body(code, message, details), status, headers=headers)


def error_body(code: str, message: str, details=None) -> dict:
    body = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return {"error": body}


# field name -> machine-readable code for request validation failures
FIELD_CODES = {
    "mode": "invalid_mode",
    "limit": "invalid_limit",
    "image": "missing_image",
    "year_min": "invalid_filter",
    "year_max": "invalid_filter",
    "genres": "invalid_filter",
    "min_popularity": "invalid_filter",
    "exclude_explicit": "invalid_filter",
    "diversity": "invalid_diversity",
    "drive": "invalid_drive",
    "track_id": "invalid_feedback",
    "liked": "invalid_feedback",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
            for e in exc.errors()
        ]
        fields = [e["field"].split(".")[0] for e in errors]
        code = next((FIELD_CODES[f] for f in fields if f in FIELD_CODES), "invalid_request")
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return error_response(request, 422, code, message, errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}
        return error_response(
            request,
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        import logging

        logging.getLogger("moodtunes.gateway").exception("unhandled error")
        return error_response(request, 500, "internal_error", "unexpected server error")
