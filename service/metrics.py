"""Prometheus metrics: one registry per app (nothing global), exposed at GET /metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from . import ingest, keys
from .auth import public

if TYPE_CHECKING:
    from .db import Database
    from .ingest.processor import Outcome
    from .ingest.worker import IngestWorker

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request and ingest metrics of one application."""

    def __init__(self) -> None:
        # (method, route, status) -> that request counter's and latency histogram's children:
        # labels() takes a lock and builds a key on every call, a dict lookup does not.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("agnes_http_requests", "HTTP requests by route pattern and status.",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("agnes_http_request_duration_seconds", "HTTP request latency by route pattern.",
                                 ["method", "route"], buckets=_BUCKETS, registry=r)
        self.files = Counter("agnes_ingest_files", "Transcript files handled by outcome.", ["outcome"], registry=r)
        self.lines = Counter("agnes_ingest_lines", "Transcript lines read.", registry=r)
        self.bytes = Counter("agnes_ingest_bytes", "Transcript bytes read.", registry=r)
        self.skipped = Counter("agnes_ingest_skipped_lines", "Transcript lines skipped as malformed.", registry=r)
        self.failures = Counter("agnes_ingest_failures", "Files whose processing failed.", registry=r)
        self.queue_depth = Gauge("agnes_ingest_queue_depth", "Files waiting to be processed.", registry=r)
        self.lag = Gauge("agnes_ingest_lag_seconds", "Age of the oldest change still waiting to be processed.",
                         registry=r)
        self.quarantined = Gauge("agnes_ingest_quarantined_files", "Files quarantined after repeated failures.",
                                 registry=r)
        self.version = Gauge("agnes_usage_processor_version", "USAGE_PROCESSOR_VERSION of this process.",
                             registry=r)
        self.heartbeat = Gauge("agnes_ingest_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.",
                               registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_outcome(self, outcome: Outcome) -> None:
        self.files.labels(outcome.status).inc()
        self.lines.inc(outcome.lines)
        self.bytes.inc(outcome.bytes)
        self.skipped.inc(outcome.skipped)
        if outcome.status in ("failed", "quarantined"):
            self.failures.inc()

    def bind_worker(self, worker: IngestWorker) -> None:
        """Gauges read from the worker at scrape time."""
        self.queue_depth.set_function(lambda: worker.depth)
        self.lag.set_function(worker.lag)
        self.quarantined.set_function(lambda: worker.quarantined_count)
        self.heartbeat.set_function(lambda: time.monotonic() - worker.last_beat)

    def bind_database(self, db: Database) -> None:
        """Reads by where they ran, read from the database's own counters at scrape time."""
        self.registry.register(_DatabaseReads(db))

    def render(self) -> bytes:
        self.version.set(ingest.USAGE_PROCESSOR_VERSION)
        return generate_latest(self.registry)


class _DatabaseReads(Collector):
    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self):
        family = CounterMetricFamily(
            "agnes_db_reads", "Reads by where they ran: inline on the event loop, or on a reader thread "
            "(over the inline budget, or met a lock).", labels=["path"])
        family.add_metric(["inline"], self.db.inline_reads)
        family.add_metric(["thread"], self.db.thread_reads)
        yield family


@public
async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition (no user data, so no credential)."""
    body = request.app[keys.METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
