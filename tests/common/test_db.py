"""moodtunes.db: pooled connections in transactions, and `statement()`'s autocommit ones."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from moodtunes import db


@pytest.fixture
def own_pool_url(database):
    """A pool of its own (one connection, used in turn), so each test sees the connection it used."""
    url = f"{database}?application_name=test_db_pool"
    db.pool(url).resize(1, 1)
    db.pool(url).wait()
    yield url
    db._pools.pop(url).close()


def test_a_statement_runs_in_no_transaction_and_the_connection_goes_back_transactional(own_pool_url):
    with db.statement(own_pool_url) as conn:
        backend = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
        # committed by the statement itself: nothing open, so no BEGIN before it, no COMMIT after
        assert conn.info.transaction_status == TransactionStatus.IDLE
    with db.connection(own_pool_url) as conn:
        assert conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] == backend
        assert not conn.autocommit
        assert conn.info.transaction_status == TransactionStatus.INTRANS


def test_a_failed_statement_leaves_its_connection_usable_and_transactional(own_pool_url):
    with pytest.raises(psycopg.errors.DivisionByZero), db.statement(own_pool_url) as conn:
        conn.execute("SELECT 1 / 0")
    with db.connection(own_pool_url) as conn:
        assert conn.execute("SELECT 2 AS two").fetchone()["two"] == 2
        assert conn.info.transaction_status == TransactionStatus.INTRANS


def test_a_connection_broken_during_a_statement_is_not_handed_out_again(own_pool_url):
    with db.statement(own_pool_url) as conn:
        broken = conn
        conn.close()  # as if the server had gone away mid-statement
    with db.connection(own_pool_url) as conn:
        assert conn is not broken and not conn.autocommit
        assert conn.execute("SELECT 3 AS three").fetchone()["three"] == 3
