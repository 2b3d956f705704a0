"""The gateway's Prometheus metrics beyond its own counters, its logs and its traces.

Logs: JSON lines (moodtunes.observability), uvicorn's too; a request about a job carries its
`job_id`. Traces (TRACING set): FastAPI's request spans, the job's Celery publish, psycopg.

Requests by route, method and status with latency and size histograms come from
prometheus-fastapi-instrumentator; every error answer is counted by its code
(moodtunes_gateway_rejections_total{code}: rate_limited, too_many_jobs, queue_full,
queue_unavailable, database_unavailable, file_too_large, invalid_*, not_found, internal_error, ...).
What the pipeline holds is read at scrape time where it lives (a custom collector): the depth of
each work queue (Redis list length) and, from the job store, the unfinished jobs by status and the
jobs finished in the last hour by status and error code (both queries use partial indexes, so a
scrape stays cheap however many jobs are kept).
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from prometheus_client import Counter
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from moodtunes import observability
from moodtunes.config import get_settings
from moodtunes_gateway import backends

log = logging.getLogger("moodtunes.gateway")


class PipelineCollector(Collector):
    """Queue depths and job counts, read when Prometheus scrapes; a source that is down is
    skipped (its gauge absent), never an error on /metrics."""

    def collect(self):
        yield from self._queues()
        yield from self._jobs()

    def _queues(self):
        import redis

        s = get_settings()
        depth = GaugeMetricFamily(
            "moodtunes_queue_depth", "Messages waiting in each work queue (Redis list)", labels=["queue"]
        )
        try:
            client = backends.redis_client()  # the gateway's short timeouts, one pooled client
            for queue in (s.fer_queue, s.recommend_queue):
                depth.add_metric([queue], client.llen(queue))
        except redis.RedisError as exc:
            log.warning("metrics: queue depth unavailable: %s", exc)
            return
        yield depth

    def _jobs(self):
        import psycopg

        from moodtunes import jobs

        try:
            backends.use_gateway_pool()  # a scrape waits no longer for the database than a request
            unfinished, finished = jobs.status_counts()
        except psycopg.Error as exc:
            log.warning("metrics: job counts unavailable: %s", exc)
            return
        gauge = GaugeMetricFamily("moodtunes_jobs_unfinished", "Unfinished jobs by status", labels=["status"])
        for status in jobs.UNFINISHED:
            gauge.add_metric([status], unfinished.get(status, 0))
        yield gauge
        recent = GaugeMetricFamily(
            "moodtunes_jobs_finished_last_hour",
            "Jobs finished in the last hour, by final status and error code ('' when done)",
            labels=["status", "code"],
        )
        for (status, code), n in sorted(finished.items()):
            recent.add_metric([status, code], n)
        yield recent


class ProcessMetrics(Collector):
    """Everything registered process-wide (the gateway's own counters, the Python process)."""

    def collect(self):
        yield from REGISTRY.collect()


def instrument(app: FastAPI) -> CollectorRegistry:
    """The registry /metrics exposes for this app: its request metrics, the pipeline collector and
    the process-wide metrics. One registry per app, so every app made in a process (tests make
    many) counts its own requests."""
    registry = CollectorRegistry()
    registry.register(ProcessMetrics())
    registry.register(PipelineCollector())
    Instrumentator(excluded_handlers=["/metrics", "/metrics/"], registry=registry).instrument(app)
    app.state.metrics_registry = registry
    app.state.rejections = Counter(
        "moodtunes_gateway_rejections",
        "Error answers by their machine-readable code (4xx and 5xx)",
        ["code"],
        registry=registry,
    )
    return registry


async def bind_path_job_id(request: Request) -> None:
    """A route's dependency: a request about one job (/v1/jobs/{job_id}...) logs with its id. Async,
    so it runs in the request's own context, which the route's thread copies."""
    job_id = request.path_params.get("job_id")
    try:
        observability.bind_job_id(str(uuid.UUID(job_id)) if job_id else None)
    except ValueError:  # not a job id: nothing to name (the route answers 404)
        pass


def setup_logging() -> None:
    """The service's JSON (or LOG_FORMAT=text) logs, uvicorn's own lines included."""
    observability.setup_logging("gateway", adopt=("uvicorn", "uvicorn.error", "uvicorn.access"))


def setup_tracing(app: FastAPI) -> bool:
    """With TRACING set: this process's Celery publishes and psycopg statements, and the app's
    requests (not /metrics nor the health checks) become spans, their context sent on with each job."""
    if not observability.setup_tracing("gateway"):
        return False
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="/metrics,/healthz,/readyz")
    return True
