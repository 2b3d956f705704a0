"""Celery wiring shared by the gateway (producer) and the workers (consumers).

Redis only carries work; every state change is written to PostgreSQL. Tasks are sent by name so
the gateway never imports worker code (and so never needs TensorFlow).
"""

from __future__ import annotations

from celery import Celery

from moodtunes.config import get_settings

FER_TASK = "moodtunes.fer.process_job"
RECOMMEND_TASK = "moodtunes.recommender.recommend"


def make_celery(name: str) -> Celery:
    s = get_settings()
    app = Celery(name, broker=s.redis_url)
    app.conf.update(
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
        broker_transport_options={"visibility_timeout": 3600},
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
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


def enqueue_fer(job_id: str, app: Celery | None = None, *, options=None) -> None:
    """Task id = job id: a redelivered or resent message names the same job, never a new one.
    `options` (events.JobOptions) travel with it, so the workers need not read them back."""
    from moodtunes.events import FerJob, to_json

    (app or producer()).send_task(
        FER_TASK,
        args=[to_json(FerJob(job_id=job_id, options=options))],
        task_id=job_id,
        queue=get_settings().fer_queue,
    )


def enqueue_recommend(event, app: Celery | None = None) -> None:
    from moodtunes.events import to_json

    (app or producer()).send_task(
        RECOMMEND_TASK,
        args=[to_json(event)],
        task_id=f"{event.job_id}:recommend",
        queue=get_settings().recommend_queue,
    )
