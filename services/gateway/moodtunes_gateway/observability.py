"""The gateway's Prometheus metrics beyond its own counters.

Requests by route, method and status with latency and size histograms come from
prometheus-fastapi-instrumentator. What the pipeline holds is read at scrape time where it lives
(a custom collector): the depth of each work queue (Redis list length) and, from the job store, the
unfinished jobs by status and the jobs finished in the last hour by status and error code (both
queries use partial indexes, so a scrape stays cheap however many jobs are kept).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

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
    return registry
