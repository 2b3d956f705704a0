"""Counting what a piece of code asks of PostgreSQL: statements and transactions, by stage.

psycopg sends BEGIN before a transaction's first statement and COMMIT (or ROLLBACK) at its end,
each a round trip of its own, so round trips = statements + 2 x transactions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg


@dataclass
class Trips:
    statements: list[str] = field(default_factory=list)
    transactions: int = 0

    @property
    def round_trips(self) -> int:
        return len(self.statements) + 2 * self.transactions

    def summary(self) -> str:
        return (
            f"{len(self.statements)} statements in {self.transactions} transactions "
            f"= {self.round_trips} round trips"
        )


@contextmanager
def counting(monkeypatch) -> Iterator[Trips]:
    """Counts every statement and transaction of every pooled or direct psycopg connection."""
    trips = Trips()
    execute, copy = psycopg.Cursor.execute, psycopg.Cursor.copy
    commit, rollback = psycopg.Connection.commit, psycopg.Connection.rollback

    def counted_execute(self, query, params=None, **kw):
        trips.statements.append(" ".join(str(query).split()))
        return execute(self, query, params, **kw)

    def counted_copy(self, statement, params=None, **kw):
        trips.statements.append(" ".join(str(statement).split()))
        return copy(self, statement, params, **kw)

    def ends(method):
        def end(self):
            if self.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                trips.transactions += 1
            return method(self)

        return end

    monkeypatch.setattr(psycopg.Cursor, "execute", counted_execute)
    monkeypatch.setattr(psycopg.Cursor, "copy", counted_copy)
    monkeypatch.setattr(psycopg.Connection, "commit", ends(commit))
    monkeypatch.setattr(psycopg.Connection, "rollback", ends(rollback))
    try:
        yield trips
    finally:
        for cls, name, orig in (
            (psycopg.Cursor, "execute", execute),
            (psycopg.Cursor, "copy", copy),
            (psycopg.Connection, "commit", commit),
            (psycopg.Connection, "rollback", rollback),
        ):
            monkeypatch.setattr(cls, name, orig)
