"""Long polling: `GET /v1/jobs/{id}?wait=S` (and `POST /v1/jobs?wait=S`) answers when the job
finishes, or after S seconds.

A waiting request is woken by PostgreSQL's NOTIFY on `jobs.FINISHED_CHANNEL` (a trigger on the
jobs table, migration 0007, fires at the commit of whichever process finished the job), through
one LISTEN connection per gateway process and event loop. No request polls the database in a
loop: a waiter reads the row when woken, and every RECHECK_S in case a notification was missed
(the listener reconnecting after a database restart).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import psycopg
from starlette.concurrency import run_in_threadpool

from moodtunes import jobs
from moodtunes.config import get_settings

log = logging.getLogger("moodtunes.gateway.finished")

MAX_WAIT_S = 30.0  # the longest a request may wait (?wait=); proxies often cut idle requests at 60 s
RECHECK_S = 2.0  # a waiter reads its job at least this often, notified or not
RECONNECT_S = 1.0
READY_WAIT_S = 1.0  # a request waits at most this long for a (re)starting listener


class FinishedJobs:
    """The job ids announced as finished, fanned out to the requests waiting on them."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()

    def _start(self) -> None:
        """Starts the listener in the running loop (again, if the loop changed or it stopped)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        if self._loop is not loop:  # a new event loop (an app made again): nothing waits in the old
            self._waiters = {}
        self._loop, self._ready = loop, asyncio.Event()
        self._task = loop.create_task(self._listen(), name="job-finished-listener")

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(get_settings().database_url, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {jobs.FINISHED_CHANNEL}")
                    self._ready.set()
                    self._wake_all()  # anything finished while we were away is read again
                    async for note in conn.notifies():
                        for event in self._waiters.get(note.payload, ()):
                            event.set()
            except (psycopg.Error, OSError) as exc:
                log.warning("job-finished listener lost its database connection (%s); reconnecting", exc)
            except Exception:  # never die quietly: waiters would be woken by their re-reads only
                log.exception("job-finished listener failed; restarting")
            self._ready.clear()
            self._wake_all()
            await asyncio.sleep(RECONNECT_S)

    async def stop(self) -> None:
        """Ends the listener (at shutdown), so its connection closes cleanly."""
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextmanager
    def _waiting(self, job_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            events = self._waiters.get(job_id)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[job_id]

    @contextmanager
    def listening(self, job_id: str) -> Iterator[asyncio.Event]:
        """A waiter registered before its job is queued (`POST /v1/jobs?wait=`): every finish comes
        after it, and a listener that (re)connects wakes it, so `wait(..., listening=event)` reads
        the job only once woken (or every RECHECK_S), never before."""
        self._start()
        with self._waiting(job_id) as event:
            yield event

    async def wait(
        self,
        job_id: str,
        timeout_s: float,
        read: Callable[[], dict],
        listening: asyncio.Event | None = None,
    ) -> dict:
        """`read()` (the job's row, run in a worker thread) once the job is final or `timeout_s`
        has passed, whichever comes first. With the listener up, a job already final costs one read.
        `listening`: the caller's waiter from `listening(job_id)`, registered before the job could
        finish; its first read waits for a wake-up."""
        self._start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        row = None
        with self._waiting(job_id) if listening is None else nullcontext(listening) as event:
            if listening is None:
                if not self._ready.is_set():  # (re)connecting: a finished (or unknown) job is
                    row = await run_in_threadpool(read)  # answered at once, else listen first
                    if row["status"] in jobs.FINAL:
                        return row
                    try:
                        await asyncio.wait_for(self._ready.wait(), min(READY_WAIT_S, timeout_s))
                    except TimeoutError:
                        pass
                row = await run_in_threadpool(read)  # registered first: no finish after it is missed
            while (row is None or row["status"] not in jobs.FINAL) and (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(event.wait(), min(left, RECHECK_S))
                except TimeoutError:
                    pass
                event.clear()
                row = await run_in_threadpool(read)
        return row if row is not None else await run_in_threadpool(read)


finished_jobs = FinishedJobs()
