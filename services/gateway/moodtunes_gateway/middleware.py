"""ASGI middleware: the upload size limit enforced while the body arrives, and the security headers
every response carries.

Pure ASGI (no BaseHTTPMiddleware): nothing here buffers a body or adds a task per request.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moodtunes.config import get_settings
from moodtunes_gateway.errors import count_rejection, error_body

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, part headers and the small form fields
OTHER_BODY_BYTES = 64 * 1024  # every other request body (feedback JSON) is tiny
UPLOAD_PATH_SUFFIXES = ("/v1/jobs", "/frames")  # POST /v1/jobs, POST /v1/sessions/{id}/frames
CLOSE = (b"connection", b"close")


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit. An HTTPException, so FastAPI's body
    parsing lets it through (any other error there becomes a 400) to the 413 handler."""

    def __init__(self, limit: int):
        super().__init__(413, f"The request body is over the {limit}-byte limit.")


def body_limit(scope: Scope) -> int:
    """Bytes a request may send: a photo upload its file limit plus the form around it."""
    if scope["path"].rstrip("/").endswith(UPLOAD_PATH_SUFFIXES):
        return get_settings().max_upload_bytes + FORM_OVERHEAD_BYTES
    return OTHER_BODY_BYTES


def too_large_response(limit: int, close: bool) -> tuple[Message, Message]:
    body = json.dumps(
        error_body("file_too_large", f"The request is over the {limit}-byte limit for this address.")
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 413, "headers": headers + ([CLOSE] if close else [])}
    return start, {"type": "http.response.body", "body": body}


class BodyLimitMiddleware:
    """A declared Content-Length over the limit is answered 413 before a byte of the body is read
    (and before any database or Redis work); a body without one (chunked) is counted as it arrives
    and cut off at the limit, so a 200 MB upload never reaches the multipart parser's temp file.

    After a declared-too-large 413 the connection stays open, so the server discards the rest as it
    comes and the client (a browser sending a big photo) surely reads the 413, not a reset. A
    chunked body cut off at the limit is no browser's: its 413 closes the connection."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            count_rejection(scope.get("app"), "file_too_large")
            for message in too_large_response(limit, close=False):
                await send(message)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if received > limit:  # the route's 413 for a body cut off: end the connection too
                    message["headers"] = [*message.get("headers", []), CLOSE]
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # read outside a route (no handler turned it into a response)
            if started:
                raise
            count_rejection(scope.get("app"), "file_too_large")
            for message in too_large_response(limit, close=True):
                await send(message)


# The page (static/) runs one module script and one stylesheet from this origin; its photo previews
# are blob: URLs, its favicon a data: URL, the camera a MediaStream. Nothing inline, no other host.
PAGE_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob: mediastream:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
# Swagger UI and ReDoc (fastapi-offline) start from an inline script/style and ReDoc runs a blob:
# worker; these pages show only the API's own schema, still from this origin only.
DOCS_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
DOCS_PATHS = ("/docs", "/redoc")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=()",
}


def csp_for(path: str) -> str:
    return DOCS_CSP if path.startswith(DOCS_PATHS) else PAGE_CSP


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response: pages, API answers, errors and 404s.
    Installed around the whole app (main.Gateway), outside Starlette's error middleware, so an
    unexpected 500 carries them too. A header the route already set is left as it is."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = csp_for(scope["path"])

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**SECURITY_HEADERS, "Content-Security-Policy": csp}.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
