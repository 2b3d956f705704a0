"""Liveness (the process answers) and readiness (Redis, PostgreSQL and the model server answer)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from moodtunes.config import get_settings
from moodtunes.db import ping as ping_database

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz():
    """On the event loop itself, no thread: it answers exactly when the loop is free, which is
    what a liveness probe should measure."""
    return {"status": "ok"}


def _redis() -> None:
    import redis

    redis.Redis.from_url(
        get_settings().redis_url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    ).ping()


def _model_server() -> None:
    """Reachability over gRPC (HTTP/2 handshake); the gateway carries no TensorFlow to ask more."""
    import grpc

    with grpc.insecure_channel(get_settings().model_server) as channel:
        grpc.channel_ready_future(channel).result(timeout=CHECK_TIMEOUT_S)


@router.get("/readyz")
async def readyz():
    checks = {"redis": _redis, "postgres": ping_database, "model_server": _model_server}
    results = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(asyncio.to_thread(check), CHECK_TIMEOUT_S + 1)
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
    ready = all(v == "ok" for v in results.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": results}, 200 if ready else 503
    )
