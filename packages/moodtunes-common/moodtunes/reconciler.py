"""The reconciler: PostgreSQL is the source of truth, so every job it holds unfinished either gets
its work sent again or ends failed with a clear code, whatever Redis or a worker lost; and
finished jobs are deleted once past their retention.

Run it as `python -m moodtunes.reconciler` (a loop; `--once` for one round). Any number of
replicas may run: a round takes its jobs with FOR UPDATE SKIP LOCKED and marks them re-sent
before it commits, so two replicas never re-send the same job. The numbers, and how they fit the
broker's visibility timeout, are in moodtunes/queue.py.

Each round, for every unfinished job:
- past JOB_TIMEOUT_S since it was created: failed `timeout` (whatever it was doing);
- no sign of life (`updated_at`, `requeued_at`) for STAGE_DEADLINE_S, doubled after each re-send
  up to 8x: in the FER stage (queued/detecting/classifying) after MAX_DELIVERIES deliveries
  (`attempts`): failed `too_many_attempts`, so a photo that kills its worker cannot loop;
  otherwise its FER task is sent again with the options from its row. A job in `recommending`
  gets the FER task too: the FER worker re-publishes its stored result (moodtunes_fer.worker.republish).

What it does is counted in moodtunes_reconciler_actions_total{action=resent|too_many_attempts|timeout},
served at :METRICS_PORT/metrics when that is set; its log lines about a job carry the job's id.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moodtunes import jobs, live, observability
from moodtunes.config import get_settings
from moodtunes.db import connection
from moodtunes.events import JobOptions, options_from_row
from moodtunes.queue import BROKER_ERRORS, check_timing, enqueue_fer

log = logging.getLogger("moodtunes.reconciler")
MAX_BACKOFF_DOUBLINGS = 3  # re-sends after 15, 30, 60, 120, 120, ... s without a sign of life
PURGE_EVERY_S = 300.0
ROUND_LIMIT = 500  # jobs per round; the rest wait for the next one
# A re-send gives up at once when Redis is away: the next round tries again.
RESEND_RETRY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2, "interval_max": 0.2}

STUCK_SQL = f"""
SELECT id, status, mode, track_limit, filters, diversity, client_key, attempts, requeues, last_error,
       created_at < now() - make_interval(secs => %(timeout_s)s) AS overdue
FROM jobs
WHERE status NOT IN {jobs.FINAL_SQL}
  AND (created_at < now() - make_interval(secs => %(timeout_s)s)
       OR greatest(updated_at, requeued_at)
          < now() - make_interval(secs => %(deadline_s)s * power(2, least(requeues, %(doublings)s))))
ORDER BY updated_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED"""


@dataclass
class Round:
    """What one round did: job ids re-sent, and job ids failed with their code."""

    requeued: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def _resend(job_id: str, options: JobOptions) -> None:
    enqueue_fer(job_id, options=options, retry_policy=RESEND_RETRY)


def _with_last_error(message: str, last_error: str | None) -> str:
    return f"{message} (last error: {last_error})" if last_error else message


def reconcile_once(
    *, limit: int = ROUND_LIMIT, enqueue: Callable[[str, JobOptions], None] | None = None
) -> Round:
    """One round over the stuck jobs, in one transaction. `enqueue(job_id, options)` sends a
    FER task (default: to the broker, giving up at once if it is away)."""
    s = get_settings()
    enqueue = enqueue or _resend
    done = Round()
    with connection() as conn:
        rows = conn.execute(
            STUCK_SQL,
            {
                "timeout_s": s.job_timeout_s,
                "deadline_s": s.stage_deadline_s,
                "doublings": MAX_BACKOFF_DOUBLINGS,
                "limit": limit,
            },
        ).fetchall()
        broker_down = False
        for row in rows:
            job_id = str(row["id"])
            token = observability.bind_job_id(job_id)
            try:
                broker_down = _reconcile_job(conn, row, job_id, enqueue, done, broker_down)
            finally:
                observability.unbind_job_id(token)
        if done.requeued:
            conn.execute(
                "UPDATE jobs SET requeues = requeues + 1, requeued_at = now() WHERE id = ANY(%s)",
                (done.requeued,),
            )
    # Counted once committed: a round that failed before its commit did nothing
    if done.requeued:
        observability.RECONCILER_ACTIONS.labels("resent").inc(len(done.requeued))
    for code in done.failed.values():
        observability.RECONCILER_ACTIONS.labels(code).inc()
    return done


def _reconcile_job(conn, row, job_id: str, enqueue, done: Round, broker_down: bool) -> bool:
    """One stuck job: failed, or its FER task sent again (recorded in `done`); returns whether the
    broker is known to be away (then nothing more is sent this round)."""
    s = get_settings()
    if row["overdue"]:
        code, message = jobs.TIMEOUT, _with_last_error(jobs.TIMEOUT_MESSAGE, row["last_error"])
    elif row["status"] in jobs.CLAIMABLE and row["attempts"] >= s.max_deliveries:
        code = jobs.TOO_MANY_ATTEMPTS
        message = jobs.too_many_attempts_message(row["attempts"], row["last_error"])
    else:
        if broker_down:
            return True
        try:
            enqueue(job_id, options_from_row(row))
        except BROKER_ERRORS as exc:  # Redis away: leave the rest for the next round
            log.warning("cannot re-send jobs, the queue is unavailable: %s", exc)
            return True
        done.requeued.append(job_id)
        log.info("job %s: no progress while %s; re-sent (%d)", job_id, row["status"], row["requeues"] + 1)
        return False
    jobs.transition(job_id, jobs.UNFINISHED, jobs.FAILED, conn=conn, error_code=code, error_message=message)
    done.failed[job_id] = code
    log.warning("job %s failed while %s: %s", job_id, row["status"], code)
    return broker_down


def purge() -> int:
    """Deletes finished jobs, and live sessions closed or idle, older than JOB_RETENTION_DAYS;
    returns how many jobs."""
    days = get_settings().job_retention_days
    n = jobs.purge_finished(days * 86400)
    if n:
        log.info("deleted %d finished job(s) older than %g days", n, days)
    sessions = live.purge(days * 86400)
    if sessions:
        log.info("deleted %d live session(s) closed or idle for over %g days", sessions, days)
    return n


def run(stop: threading.Event, *, interval_s: float | None = None) -> None:
    """Rounds every RECONCILE_INTERVAL_S and a purge every PURGE_EVERY_S until `stop` is set; an
    outage of PostgreSQL or Redis only skips rounds."""
    s = get_settings()
    interval_s = s.reconcile_interval_s if interval_s is None else interval_s
    for problem in check_timing(s):
        log.warning("settings disagree: %s", problem)
    log.info(
        "reconciling every %g s: re-send after %g s without progress, at most %d deliveries, "
        "jobs fail after %g s, results kept %g days",
        interval_s,
        s.stage_deadline_s,
        s.max_deliveries,
        s.job_timeout_s,
        s.job_retention_days,
    )
    next_purge = time.monotonic()
    while not stop.is_set():
        try:
            reconcile_once()
            if time.monotonic() >= next_purge:
                purge()
                next_purge = time.monotonic() + PURGE_EVERY_S
        except Exception as exc:  # the database is away, most likely: try again next round
            log.warning("reconcile round failed: %s", exc)
        stop.wait(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moodtunes.reconciler", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--once", action="store_true", help="one round and one purge, then exit")
    parser.add_argument("--interval", type=float, default=None, help="seconds between rounds")
    args = parser.parse_args(argv)
    observability.setup_logging("reconciler")
    observability.setup_tracing("reconciler")
    if args.once:
        done = reconcile_once()
        purged = purge()
        print(f"re-sent {len(done.requeued)}, failed {len(done.failed)}, purged {purged}")
        return 0
    port = get_settings().metrics_port
    if port:
        log.info("serving Prometheus metrics at :%d/metrics", observability.serve_metrics(port))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    run(stop, interval_s=args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
