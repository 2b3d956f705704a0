"""The gateway's side of PostgreSQL and Redis: short waits and no retry loops in a request.

A worker may wait for its database or broker; a request must not. With either down, the client gets
503 + Retry-After in well under a second (benchmarks/gateway_stall.py) instead of a hung connection,
and the thread it ran in is free again at once.
"""

from __future__ import annotations

import logging
import threading

import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from moodtunes import db
from moodtunes.config import get_settings
from moodtunes.queue import make_celery
from moodtunes_gateway.errors import APIError

log = logging.getLogger("moodtunes.gateway")
RETRY_AFTER_S = 5  # what a 503 tells the client to wait
_lock = threading.Lock()
_redis: dict[tuple[str, float], redis.Redis] = {}
_producers: dict[tuple[str, float], Celery] = {}


def use_gateway_pool() -> None:
    """Sets up this process's shared pool (moodtunes.db) for requests, once per pool: a request
    waits at most gateway_db_timeout_s for a connection (a worker waits 10 s), and every connection
    the pool may have is kept open, so a burst of requests finds them ready instead of waiting
    for new ones to log in (which could take longer than that wait). Called before a request's
    first query: cheap, and it follows a pool re-created for another DATABASE_URL."""
    pool = db.pool()
    timeout = get_settings().gateway_db_timeout_s
    if pool.timeout != timeout:
        pool.timeout = timeout
    if pool.min_size < pool.max_size:
        pool.resize(pool.max_size)


_pool_check = threading.Lock()


def _drop_dead_connections_soon() -> None:
    """After a PostgreSQL restart the pool's idle connections are dead: one background check at a
    time drops them, so the next request gets a live one while this one's 503 stays fast (a check
    against a hung server could take long)."""

    def check() -> None:
        try:
            db.drop_dead_connections()
        finally:
            _pool_check.release()

    if _pool_check.acquire(blocking=False):
        threading.Thread(target=check, name="pool-check", daemon=True).start()


def database_unavailable(exc: Exception) -> APIError:
    log.error("database unavailable: %s", exc)
    _drop_dead_connections_soon()
    return APIError(
        503,
        "database_unavailable",
        "The job store is unavailable; try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def queue_unavailable(exc: Exception) -> APIError:
    log.error("queue unavailable: %s", exc)
    return APIError(
        503,
        "queue_unavailable",
        "The work queue is unavailable; try again shortly.",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def redis_options() -> dict:
    """redis-py options for a request: one attempt (redis-py retries 3 times by default), short timeouts."""
    timeout = get_settings().gateway_redis_timeout_s
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}


def redis_client() -> redis.Redis:
    s = get_settings()
    key = (s.redis_url, s.gateway_redis_timeout_s)
    with _lock:
        if key not in _redis:
            _redis[key] = redis.Redis.from_url(s.redis_url, **redis_options())
        return _redis[key]


def producer() -> Celery:
    """The gateway's Celery producer: the shared wiring (moodtunes.queue), but a publish that cannot
    reach Redis fails at once (one reconnect, no sleeping) instead of retrying for seconds."""
    s = get_settings()
    key = (s.redis_url, s.gateway_redis_timeout_s)
    with _lock:
        if key not in _producers:
            app = make_celery("moodtunes-gateway")
            timeout = s.gateway_redis_timeout_s
            app.conf.update(
                broker_connection_timeout=timeout,
                broker_transport_options={
                    **(app.conf.broker_transport_options or {}),
                    "socket_timeout": timeout,
                    "socket_connect_timeout": timeout,
                    "max_retries": 0,  # kombu's connect loop (default: retry with 2 s sleeps)
                    "interval_start": 0,
                },
                task_publish_retry=True,  # one immediate retry: a pooled connection Redis dropped
                task_publish_retry_policy={
                    "max_retries": 1,
                    "interval_start": 0,
                    "interval_step": 0,
                    "interval_max": 0,
                },
            )
            _producers[key] = app
        return _producers[key]
