"""PostgreSQL access (psycopg 3). PostgreSQL is the system of record for jobs and tracks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from moodtunes.config import get_settings

_pools: dict[str, ConnectionPool] = {}


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


def close_pools() -> None:
    for p in _pools.values():
        p.close()
    _pools.clear()


def ping(url: str | None = None) -> None:
    with psycopg.connect(url or get_settings().database_url, connect_timeout=3) as conn:
        conn.execute("SELECT 1")
