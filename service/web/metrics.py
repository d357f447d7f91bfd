"""Prometheus metrics: one registry per app (nothing global), exposed at GET /metrics."""

from __future__ import annotations

import time
from bisect import bisect_left
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from .. import ingest, keys
from .auth import public
from ..store import ingest as ingest_store

if TYPE_CHECKING:
    from ..db import BaseDatabase
    from ..ingest.processor import Outcome
    from ..ingest.worker import IngestWorker

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Request and ingest metrics of one application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = _RequestStats()
        r.register(self._requests)
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
        self.redacted_tokens = Counter("agnes_redacted_tokens", "agnes_pat_ tokens replaced in uploaded "
                                       "transcripts before they were stored.", registry=r)
        self.heartbeat = Gauge("agnes_ingest_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.",
                               registry=r)
        # The agnes_ingest_* counters are this process's worker; these are read from the database at
        # each scrape, so files that `agnes-home ingest` (another process) stored count too.
        self.stored_files = Gauge("agnes_stored_files", "Processed transcript files in the database by origin "
                                  "(upload, watch, cli), whichever process ingested them.", ["origin"], registry=r)
        self.stored_bytes = Gauge("agnes_stored_bytes", "Bytes of the processed transcript files in the database "
                                  "by origin.", ["origin"], registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.observe(method, route, status, seconds)

    def request_counts(self) -> dict[tuple[str, str, int], int]:
        """Requests so far by (method, route pattern, status)."""
        return self._requests.counts()

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

    def bind_database(self, db: BaseDatabase) -> None:
        """Reads by where they ran, read from the database's own counters at scrape time."""
        self.registry.register(_DatabaseReads(db))

    def set_stored(self, by_origin: dict[str, tuple[int, int]]) -> None:
        for origin, (files, size) in by_origin.items():
            self.stored_files.labels(origin).set(files)
            self.stored_bytes.labels(origin).set(size)

    def render(self) -> bytes:
        self.version.set(ingest.USAGE_PROCESSOR_VERSION)
        return generate_latest(self.registry)


class _RequestStats(Collector):
    """Request counts and latencies, as the counter and histogram families scrapes expect.

    Every request is observed, so the hot path is a dict lookup and three additions: the
    library's Counter and Histogram take a lock per increment and walk the buckets in Python
    (~5 us a request, a twentieth of a cached home-stats request). Only the event loop's thread
    observes and scrapes, so nothing needs a lock.
    """

    def __init__(self) -> None:
        # (method, route, status) -> [count, seconds, per-bucket counts (the last one is +Inf), created]
        self._by_key: dict[tuple[str, str, int], list[Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        entry = self._by_key.get((method, route, status))
        if entry is None:
            entry = self._by_key[(method, route, status)] = [0, 0.0, [0] * (len(_BUCKETS) + 1), time.time()]
        entry[0] += 1
        entry[1] += seconds
        entry[2][bisect_left(_BUCKETS, seconds)] += 1  # the first bound at or above: le semantics

    def counts(self) -> dict[tuple[str, str, int], int]:
        return {key: entry[0] for key, entry in self._by_key.items()}

    def collect(self):
        requests = CounterMetricFamily("agnes_http_requests", "HTTP requests by route pattern and status.",
                                       labels=["method", "route", "status"])
        latency = HistogramMetricFamily("agnes_http_request_duration_seconds",
                                        "HTTP request latency by route pattern.", labels=["method", "route"])
        by_route: dict[tuple[str, str], list[Any]] = {}
        for (method, route, status), (count, seconds, buckets, created) in sorted(self._by_key.items()):
            requests.add_metric([method, route, str(status)], count, created=created)
            merged = by_route.setdefault((method, route), [0.0, [0] * len(buckets), created])
            merged[0] += seconds
            merged[1] = [a + b for a, b in zip(merged[1], buckets)]
            merged[2] = min(merged[2], created)
        bounds = [floatToGoString(b) for b in _BUCKETS] + ["+Inf"]
        for (method, route), (seconds, buckets, created) in by_route.items():
            latency.add_metric([method, route], list(zip(bounds, accumulate(buckets))), sum_value=seconds)
            # As the library's Histogram exports it (its family class takes no creation time).
            latency.samples.append(Sample(f"{latency.name}_created", {"method": method, "route": route}, created))
        yield requests
        yield latency


class _DatabaseReads(Collector):
    def __init__(self, db: BaseDatabase) -> None:
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
    metrics = request.app[keys.METRICS]
    metrics.set_stored(await ingest_store.stored_by_origin(request.app[keys.DB]))
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
