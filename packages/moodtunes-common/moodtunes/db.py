"""PostgreSQL access (psycopg 3). PostgreSQL is the system of record for jobs and tracks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import psycopg
import tenacity
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from moodtunes import observability
from moodtunes.config import get_settings

log = logging.getLogger("moodtunes.db")
_pools: dict[str, ConnectionPool] = {}

# The server is gone, restarting or refusing connections, or the pool could not hand one out in
# time (psycopg_pool.PoolTimeout is one of these): the same statement may well succeed in a moment.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError,)

P = ParamSpec("P")
R = TypeVar("R")


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:  # extension not created yet (before migrations)
        pass


def pool(url: str | None = None) -> ConnectionPool:
    """One lazily opened pool per database URL per process (Celery forks before first use)."""
    url = url or get_settings().database_url
    if url not in _pools:
        _pools[url] = ConnectionPool(
            url,
            min_size=1,
            max_size=8,
            open=True,
            configure=_configure,
            kwargs={"row_factory": dict_row, "autocommit": False},
            timeout=10,
        )
    return _pools[url]


@contextmanager
def connection(url: str | None = None) -> Iterator[psycopg.Connection]:
    """A pooled connection in a transaction: committed on success, rolled back on error."""
    with pool(url).connection() as conn:
        yield conn


@contextmanager
def statement(url: str | None = None) -> Iterator[psycopg.Connection]:
    """A pooled connection in autocommit, for work that is one statement (a guarded transition, a
    read): PostgreSQL runs the statement as its own transaction, so the BEGIN and COMMIT round trips
    of `connection()` are not needed. That halves the cost of a one-statement transaction, client
    and server together (~0.24 -> ~0.12 ms of CPU here; several run per job)."""
    with pool(url).connection() as conn:
        conn.autocommit = True
        try:
            yield conn
        finally:
            _back_in_transactions(conn)


def _back_in_transactions(conn: psycopg.Connection) -> None:
    """The connection goes back to the pool as `connection()` hands it out. Done here, not by a
    pool `reset` callback: with one, psycopg_pool returns every connection from a background
    thread, and the next request finds none free (a job took ~100 ms longer at concurrency 4)."""
    try:
        if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
            conn.rollback()
        if conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = False
            return
    except psycopg.Error:
        pass
    conn.close()  # broken or busy: the pool drops it rather than hand out an autocommit connection


def close_pools() -> None:
    for p in _pools.values():
        p.close()
    _pools.clear()


def ping(url: str | None = None) -> None:
    with psycopg.connect(url or get_settings().database_url, connect_timeout=3) as conn:
        conn.execute("SELECT 1")


def _before_retry(state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("database unavailable (%s); retry %d", exc, state.attempt_number)
    observability.note_retry("database")  # moodtunes_task_retries_total{reason="database"}
    drop_dead_connections()


def drop_dead_connections() -> None:
    """After a restart every idle pooled connection is dead: checking the pools drops them all, so
    the next user gets a fresh connection instead of the next dead one."""
    for p in list(_pools.values()):
        try:
            p.check()
        except Exception:  # the server may still be down: the pool reconnects on its own
            pass


def _out_of_time(state: tenacity.RetryCallState) -> bool:
    return state.seconds_since_start >= get_settings().db_retry_s


def retry_transient(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` again, with backoff (0.1 s doubling to 2 s), while PostgreSQL is away, for up to
    DB_RETRY_S; then the last error is raised. Only for work that is safe to repeat: one
    transaction, and guarded writes (moodtunes.jobs) that do nothing the second time."""
    return tenacity.retry(
        retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
        wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
        stop=_out_of_time,
        before_sleep=_before_retry,
        reraise=True,
    )(fn)
