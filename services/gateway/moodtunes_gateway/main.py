"""The gateway's ASGI app: `uvicorn moodtunes_gateway.main:app`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from moodtunes_gateway import errors
from moodtunes_gateway.routes import health, jobs

STATIC = Path(__file__).with_name("static")
log = logging.getLogger("moodtunes.gateway")


async def sweep_stale_jobs() -> None:
    """Fails jobs that stopped making progress (a lost worker, a dropped message) even when nobody
    polls them, so no job stays unfinished forever."""
    from moodtunes import jobs as job_store
    from moodtunes.config import get_settings

    while True:
        await asyncio.sleep(get_settings().stale_sweep_interval_s)
        try:
            n = await asyncio.to_thread(job_store.expire_stale, get_settings().job_timeout_s)
            if n:
                log.warning("failed %d stale job(s) with code 'timeout'", n)
        except Exception as exc:  # the database may be briefly away: try again next round
            log.error("stale-job sweep failed: %s", exc)


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI):
    sweeper = asyncio.create_task(sweep_stale_jobs())
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper


def create_app() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # /docs and /redoc with Swagger UI / ReDoc served by the app itself (fastapi-offline ships them),
    # not from a CDN, so the API docs work on a machine without internet.
    app = FastAPIOffline(
        title="moodtunes",
        version="0.1.0",
        lifespan=lifespan,
        description="Face photo -> emotion -> music. Submit a job, poll it, get a playlist.",
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)

    @app.get("/metrics", include_in_schema=False)
    @app.get("/metrics/", include_in_schema=False)  # the address it had before; scrapers may keep it
    def metrics(request: Request) -> Response:
        """Prometheus exposition at /metrics itself, with no redirect to follow, in the format the
        scraper's Accept header asks for (as prometheus_client's own ASGI app would answer)."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(REGISTRY), media_type=content_type)

    if (STATIC / "index.html").exists():
        app.mount("/", StaticFiles(directory=STATIC, html=True), name="web")
    else:

        @app.get("/", include_in_schema=False)
        def root():
            return RedirectResponse("/docs")

    return app


app = create_app()
