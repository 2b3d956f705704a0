"""Celery wiring shared by the gateway (producer) and the workers (consumers).

Redis only carries work; every state change is written to PostgreSQL. Tasks are sent by name so
the gateway never imports worker code (and so never needs TensorFlow).

How a job survives a crash or an outage, with the default settings (config.Settings); the
relations are checked by `check_timing` (tests, and the reconciler at start):

- Every task is acknowledged late and is idempotent by job id (guarded transitions in
  moodtunes.jobs), so any message may be delivered twice.
- Inside a task, short outages are waited out: PostgreSQL for DB_RETRY_S (30 s, moodtunes.db),
  the model server for MODEL_RETRY_S (30 s, FER worker), Redis for PUBLISH_RETRY_S (30 s, the
  publish retry policy below). A task that still fails leaves its job unfinished; it is never
  failed for a transient error.
- The reconciler (moodtunes.reconciler, every RECONCILE_INTERVAL_S, 2 s) re-sends the FER task of
  a job with no sign of life for STAGE_DEADLINE_S (15 s; then 30, 60, 120 s after each re-send),
  fails a job claimed MAX_DELIVERIES (5) times with `too_many_attempts`, and any job unfinished
  JOB_TIMEOUT_S (180 s) after it was created with `timeout`.
- The broker redelivers a message that was taken and never acknowledged (its worker's main
  process died) after VISIBILITY_TIMEOUT_S (120 s), looking every RESTORE_EVERY_S (10 s). That
  is a backstop for when no reconciler runs, and it must agree with the rest:
  longest task (30 + 30 + 10 model timeout + 30 = 100 s) < 120 s: a running task is not redelivered;
  120 + 10 = 130 s <= JOB_TIMEOUT_S (180 s): a redelivery comes before the job's deadline;
  STAGE_DEADLINE_S (15 s) < 120 s: the reconciler, not the broker, normally recovers a lost message.
"""

from __future__ import annotations

from contextlib import contextmanager

import redis.exceptions
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import redis as kombu_redis

from moodtunes.config import Settings, get_settings

FER_TASK = "moodtunes.fer.process_job"
RECOMMEND_TASK = "moodtunes.recommender.recommend"

VISIBILITY_TIMEOUT_S = 120
RESTORE_EVERY_S = 10

# Redis is gone or restarting: publishing again in a moment may succeed.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    KombuOperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)

# The gateway's publish: a client is waiting, so give up fast (~2 s) and answer 503.
QUICK_RETRY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


def outage_retry_policy(budget_s: float | None = None) -> dict:
    """A publish retry policy that waits out a Redis outage of about `budget_s` (default
    PUBLISH_RETRY_S): retries at once, after 0.5 s, then every second."""
    budget_s = get_settings().publish_retry_s if budget_s is None else budget_s
    return {
        "max_retries": max(1, round(budget_s)),
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1.0,
        "errback": _publish_retried,  # kombu calls it before each retry
    }


def _publish_retried(exc: Exception, interval: float) -> None:
    from moodtunes import observability

    observability.note_retry("broker")  # moodtunes_task_retries_total{reason="broker"}


def longest_task_s(s: Settings) -> float:
    """The longest a task may run while it waits out outages (each budget spent once)."""
    return s.db_retry_s + s.model_retry_s + s.model_timeout_s + s.publish_retry_s


def check_timing(s: Settings | None = None) -> list[str]:
    """The relations above that these settings break (empty: they agree)."""
    s = s or get_settings()
    problems = []
    if longest_task_s(s) >= VISIBILITY_TIMEOUT_S:
        problems.append(
            f"a task may run {longest_task_s(s):g} s, not under the visibility timeout "
            f"({VISIBILITY_TIMEOUT_S} s): a running task could be redelivered"
        )
    if VISIBILITY_TIMEOUT_S + RESTORE_EVERY_S > s.job_timeout_s:
        problems.append(
            f"a broker redelivery may come after {VISIBILITY_TIMEOUT_S + RESTORE_EVERY_S} s, "
            f"past JOB_TIMEOUT_S ({s.job_timeout_s:g} s)"
        )
    if s.stage_deadline_s >= VISIBILITY_TIMEOUT_S:
        problems.append(
            f"STAGE_DEADLINE_S ({s.stage_deadline_s:g} s) is not under the visibility timeout: "
            "lost messages would wait for the broker"
        )
    if s.stage_deadline_s >= s.job_timeout_s:
        problems.append("STAGE_DEADLINE_S is not under JOB_TIMEOUT_S: stuck jobs are never re-sent")
    return problems


class RedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, keeping one client for its plain commands. kombu makes a new
    redis.Redis for every publish, every unacked-index update and every ack (two per task in a
    worker's main process), each copying redis-py's ~200 response callbacks: ~64 us of CPU, six
    times per job. A redis.Redis is thread-safe and holds nothing but its connection pool, so one
    per pool serves them all."""

    _plain_client: redis.Redis | None = None

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        pool = self.pool  # kombu makes a new one after a disconnect: the client follows it
        if self._plain_client is None or self._plain_client.connection_pool is not pool:
            self._plain_client = self._create_client()
        yield self._plain_client


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel


REDIS_TRANSPORT = f"{__name__}:RedisTransport"


def broker_transport_for(url: str) -> str | None:
    """RedisTransport for redis:// and rediss:// brokers; any other scheme (sentinel://) keeps the
    transport kombu picks from the URL."""
    return REDIS_TRANSPORT if url.split("://", 1)[0] in ("redis", "rediss") else None


def make_celery(name: str) -> Celery:
    s = get_settings()
    app = Celery(name, broker=s.redis_url)
    app.conf.update(
        broker_transport=broker_transport_for(s.redis_url),
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # results live in PostgreSQL
        task_acks_late=True,  # a task whose worker dies is redelivered, not lost
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # long, GPU-bound tasks: no hoarding
        task_routes={FER_TASK: {"queue": s.fer_queue}, RECOMMEND_TASK: {"queue": s.recommend_queue}},
        task_default_queue=s.fer_queue,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "unacked_restore_interval": RESTORE_EVERY_S,
            "unacked_restore_throttle": 1,  # look every RESTORE_EVERY_S, not 10 times less often
            "socket_connect_timeout": 3,
            "socket_timeout": 10,  # a publish on a half-open connection fails instead of hanging
        },
        task_publish_retry=True,
        task_publish_retry_policy=QUICK_RETRY,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


_producer: Celery | None = None


def producer() -> Celery:
    global _producer
    if _producer is None:
        _producer = make_celery("moodtunes-producer")
    return _producer


def task_reprs(job_id: str) -> dict[str, str]:
    """What Flower and Celery's logs show for a task's arguments: its job, not the event's JSON.
    Given, Celery skips building its own bounded repr of the JSON argument (~0.2 ms of CPU per
    publish, in the gateway and the FER worker)."""
    return {"argsrepr": f"[job {job_id}]", "kwargsrepr": "{}"}


def enqueue_fer(
    job_id: str, app: Celery | None = None, *, options=None, retry_policy: dict | None = None
) -> None:
    """Task id = job id: a redelivered or resent message names the same job, never a new one.
    `options` (events.JobOptions) travel with it, so the workers need not read them back.
    Without `retry_policy`, the app's own publish policy applies (the gateway's gives up fast)."""
    from moodtunes.events import FerJob, to_json

    (app or producer()).send_task(
        FER_TASK,
        args=[to_json(FerJob(job_id=job_id, options=options))],
        task_id=job_id,
        queue=get_settings().fer_queue,
        **task_reprs(job_id),
        **({"retry_policy": retry_policy} if retry_policy else {}),
    )


def enqueue_recommend(event, app: Celery | None = None, *, retry_policy: dict | None = None) -> None:
    """The FER worker's publish: waits out a Redis outage of PUBLISH_RETRY_S before it gives up."""
    from moodtunes.events import to_json

    (app or producer()).send_task(
        RECOMMEND_TASK,
        args=[to_json(event)],
        task_id=f"{event.job_id}:recommend",
        queue=get_settings().recommend_queue,
        **task_reprs(event.job_id),
        retry_policy=retry_policy or outage_retry_policy(),
    )
