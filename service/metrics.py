"""Prometheus metrics of the service.

Job metrics are read from Redis at scrape time, so every gateway replica reports the same
numbers and a gateway restart loses nothing: jobs by state, queue length, and histograms of
run time (on the worker) and latency (submission to the end) written by the workers
(``JobStore._observe``). Request counts are per gateway process.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import broker
from jobs.store import DURATION_BUCKETS, JobStore

HISTOGRAMS = {
    "run_seconds": "Time a job ran on a worker, by kind and final state",
    "latency_seconds": "Time from submission to the job's end, by kind and final state",
}


class JobCollector(Collector):
    def __init__(self, store: JobStore, queue: str):
        self.store, self.queue = store, queue

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("riir_redis_up", "1 when the gateway reaches Redis")
        try:
            counts = self.store.counts()
            waiting = broker.queue_length(self.store.redis, self.queue)
            histograms = {name: self.store.histograms(name) for name in HISTOGRAMS}
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            "riir_jobs", "Jobs by state (kept for the retention period)", labels=["status"]
        )
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("riir_queue_length", "Jobs waiting for a worker", value=waiting)
        for name, doc in HISTOGRAMS.items():
            family = HistogramMetricFamily(f"riir_job_{name}", doc, labels=["kind", "status"])
            for (kind, status), values in sorted(histograms[name].items()):
                count = values.get("count", 0.0)
                buckets = [(str(float(b)), values.get(f"le:{b}", 0.0)) for b in DURATION_BUCKETS]
                family.add_metric(
                    [kind, status], buckets + [("+Inf", count)], sum_value=values.get("sum", 0.0)
                )
            yield family


def make_registry(store: JobStore, queue: str) -> tuple[CollectorRegistry, Counter]:
    """A registry per app (not the global one), so several apps can live in one process."""
    registry = CollectorRegistry()
    registry.register(JobCollector(store, queue))
    requests = Counter(
        "riir_http_requests",
        "HTTP requests by route and status",
        ["method", "route", "status"],
        registry=registry,
    )
    return registry, requests


class RequestMetrics:
    """ASGI middleware counting requests by route template (bounded label values)."""

    def __init__(self, app: ASGIApp, counter: Counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.counter.labels(scope["method"], path, str(status)).inc()
