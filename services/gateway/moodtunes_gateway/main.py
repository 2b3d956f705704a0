"""The gateway's ASGI app: `uvicorn moodtunes_gateway.main:app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp

from moodtunes.config import get_settings
from moodtunes_gateway import errors, observability
from moodtunes_gateway.guards import QueueDepth
from moodtunes_gateway.identity import Sessions
from moodtunes_gateway.middleware import BodyLimitMiddleware, SecurityHeadersMiddleware
from moodtunes_gateway.routes import health, jobs, sessions

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("moodtunes.gateway")


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI):
    """Nothing to start: stale jobs are not the gateway's business (the reconciler,
    `python -m moodtunes.reconciler`, re-sends or fails them). On shutdown the database pool is
    closed, so its connections end cleanly instead of being cut."""
    yield
    from moodtunes import db
    from moodtunes_gateway.finished import finished_jobs

    await finished_jobs.stop()  # the long polls' LISTEN connection
    await asyncio.to_thread(db.close_pools)


def wrap_in_security_headers(app: FastAPI) -> None:
    """Puts the security headers around the whole middleware stack, Starlette's error middleware
    included, so no response (an unexpected 500 either) leaves without them. (FastAPIOffline is a
    factory, not a class to subclass: the app's own builder is wrapped instead.)"""
    build = app.build_middleware_stack

    def build_middleware_stack() -> ASGIApp:
        return SecurityHeadersMiddleware(build())

    app.build_middleware_stack = build_middleware_stack


def cors_origins(setting: str) -> list[str]:
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]


def document_optional_api_key(app: FastAPI) -> None:
    """The schema says what the gateway does: an API key is one way in, a browser session (or none,
    for a first job) the other, so every secured operation also lists the empty requirement."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                security = operation.get("security") if isinstance(operation, dict) else None
                if security and {} not in security:
                    security.append({})
        return schema

    app.openapi = openapi


def create_app() -> FastAPI:
    """Raises (so the server does not start) in production without SESSION_SECRET."""
    observability.setup_logging()
    settings = get_settings()
    # /docs and /redoc with Swagger UI / ReDoc served by the app itself (fastapi-offline ships them),
    # not from a CDN, so the API docs work on a machine without internet.
    app = FastAPIOffline(
        title="moodtunes",
        version="0.1.0",
        lifespan=lifespan,
        description=(
            "Face photo -> emotion -> music. Submit a job, poll it, get a playlist. A job and its "
            "feedback belong to whoever made it: a browser by the session cookie the gateway sets on "
            "its first job, a program by its API key (`Authorization: Bearer mt_...`)."
        ),
    )
    # With TRACING set, requests are spans: instrumented before the security headers go around the
    # stack, since the instrumentation rebuilds Starlette's own stack (it expects its error middleware)
    observability.setup_tracing(app)
    wrap_in_security_headers(app)
    app.state.sessions = Sessions(settings)
    app.state.queue_depth = QueueDepth()
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware)
    # Browsers on other origins: only those listed (CORS_ALLOW_ORIGINS), with an API key, no cookies.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=cors_origins(settings.cors_allow_origins),
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Accept"],
        expose_headers=["Location", "Retry-After"],
        max_age=600,
    )
    app.include_router(health.router)
    app.include_router(jobs.router, dependencies=[Depends(observability.bind_path_job_id)])
    app.include_router(sessions.router)
    document_optional_api_key(app)
    observability.instrument(app)

    @app.get("/metrics", include_in_schema=False)
    @app.get("/metrics/", include_in_schema=False)  # the address it had before; scrapers may keep it
    def metrics(request: Request) -> Response:
        """Prometheus exposition at /metrics itself, with no redirect to follow, in the format the
        scraper's Accept header asks for (as prometheus_client's own ASGI app would answer)."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(request.app.state.metrics_registry), media_type=content_type)

    if (STATIC / "index.html").exists():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="web")
    else:

        @app.get("/", include_in_schema=False)
        def root():
            return RedirectResponse("/docs")

    return app


app = create_app()
