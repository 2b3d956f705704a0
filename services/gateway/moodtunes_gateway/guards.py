"""What one client may ask of the service, and when the service says "not now".

- Rate limits per client (its owner identity, else its IP), kept in Redis so every gateway replica
  counts together (`limits`, moving window): 429 rate_limited + Retry-After.
- A cap on a client's unfinished jobs, counted in PostgreSQL: 429 too_many_jobs.
- Backpressure: while more FER tasks wait in Redis than fer_queue_max_depth, new jobs get
  503 queue_full + Retry-After instead of a place in a queue they would time out in.
Defaults are generous: a person, or a batch client that waits for its jobs, never meets them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from functools import lru_cache

import psycopg
import redis
from limits import RateLimitItem, parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from moodtunes import jobs
from moodtunes.config import get_settings
from moodtunes_gateway import backends
from moodtunes_gateway.errors import APIError

log = logging.getLogger("moodtunes.gateway")
TOO_MANY_JOBS_RETRY_S = 5
QUEUE_FULL_RETRY_S = 10
_lock = threading.Lock()
_limiters: dict[tuple[str, float], MovingWindowRateLimiter] = {}


@lru_cache
def _limit(spec: str) -> RateLimitItem:
    return parse(spec)


def _limiter() -> MovingWindowRateLimiter:
    s = get_settings()
    key = (s.redis_url, s.gateway_redis_timeout_s)
    with _lock:
        if key not in _limiters:
            _limiters[key] = MovingWindowRateLimiter(RedisStorage(s.redis_url, **backends.redis_options()))
        return _limiters[key]


def check_rate(kind: str, spec: str, client: str) -> None:
    """Counts one `kind` request of `client` against `spec` (e.g. "120/minute"; "" = no limit).
    With Redis unreachable the request goes through: the limit protects the service, it is not
    a reason to refuse work (a job then fails on the queue check with its own 503)."""
    if not spec:
        return
    item, limiter = _limit(spec), _limiter()
    try:
        if limiter.hit(item, kind, client):
            return
        reset_at, _ = limiter.get_window_stats(item, kind, client)
    except redis.RedisError as exc:
        log.warning("rate limit not checked (Redis unavailable): %s", exc)
        return
    retry_after = max(1, math.ceil(reset_at - time.time()))
    raise APIError(
        429,
        "rate_limited",
        f"Too many requests: at most {spec} per client. Try again in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )


def check_unfinished(owner: str) -> None:
    """At most max_unfinished_jobs_per_client jobs of one owner in flight. Counted before the insert,
    so concurrent requests of one client can overshoot by the few in flight; the rate limit bounds
    those."""
    cap = get_settings().max_unfinished_jobs_per_client
    if cap <= 0:
        return
    backends.use_gateway_pool()
    try:
        n = jobs.count_unfinished(owner)
    except psycopg.OperationalError as exc:
        raise backends.database_unavailable(exc) from exc
    if n >= cap:
        raise APIError(
            429,
            "too_many_jobs",
            f"You have {n} unfinished jobs (the limit is {cap}); wait for them to finish.",
            headers={"Retry-After": str(TOO_MANY_JOBS_RETRY_S)},
        )


class QueueDepth:
    """The FER queue's length in Redis (LLEN of Celery's list), read at most once per
    queue_depth_cache_s per gateway process: a cheap check on every job creation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._depth = 0

    def current(self) -> int:
        s = get_settings()
        with self._lock:
            if time.monotonic() - self._read_at >= s.queue_depth_cache_s:
                self._depth = backends.redis_client().llen(s.fer_queue)
                self._read_at = time.monotonic()
            return self._depth

    def check(self) -> None:
        """503 queue_full past the bound; 503 queue_unavailable when Redis does not answer (the
        job could not be enqueued anyway, so none is created)."""
        bound = get_settings().fer_queue_max_depth
        if bound <= 0:
            return
        try:
            depth = self.current()
        except redis.RedisError as exc:
            raise backends.queue_unavailable(exc) from exc
        if depth >= bound:
            raise APIError(
                503,
                "queue_full",
                f"{depth} photos are waiting to be read; please try again in a little while.",
                headers={"Retry-After": str(QUEUE_FULL_RETRY_S)},
            )
