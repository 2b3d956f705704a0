"""Every error leaves the API as JSON {"error": {"code", "message", "details"}} with a 4xx/5xx status."""

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
    "track_id": "invalid_feedback",
    "liked": "invalid_feedback",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        return JSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
            for e in exc.errors()
        ]
        fields = [e["field"].split(".")[0] for e in errors]
        code = next((FIELD_CODES[f] for f in fields if f in FIELD_CODES), "invalid_request")
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse(error_body(code, message, errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}
        return JSONResponse(
            error_body(codes.get(exc.status_code, "http_error"), str(exc.detail)),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception):
        import logging

        logging.getLogger("moodtunes.gateway").exception("unhandled error")
        return JSONResponse(error_body("internal_error", "unexpected server error"), 500)
