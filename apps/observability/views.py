"""GET /metrics: Prometheus text format, merged across processes, plus gauges read from the shards.

A scrape costs O(1): the process counters are files summed in memory, and the gauges read from
the shards (ShardCollector) are computed at most once per METRICS_SHARD_GAUGES_SECONDS per
process, however many scrapes arrive; concurrent scrapes wait for the one computing them.
With METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from apps.common.errors import error_body
from apps.observability.collectors import ShardCollector, SupervisorCollector


class CachedCollector(Collector):
    """Another collector's metrics, computed again only when older than `seconds`."""

    def __init__(self, inner: Collector, seconds: float) -> None:
        self.inner = inner
        self.seconds = seconds
        self.lock = threading.Lock()
        self.metrics: list[Metric] = []
        self.computed_at: float | None = None

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            now = time.monotonic()
            if self.computed_at is None or now - self.computed_at >= self.seconds:
                self.metrics = list(self.inner.collect())
                self.computed_at = now
            return list(self.metrics)


_shard_gauges: CachedCollector | None = None


def _shard_collector() -> CachedCollector:
    global _shard_gauges
    if _shard_gauges is None or _shard_gauges.seconds != settings.METRICS_SHARD_GAUGES_SECONDS:
        _shard_gauges = CachedCollector(ShardCollector(), settings.METRICS_SHARD_GAUGES_SECONDS)
    return _shard_gauges


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every gunicorn and Celery process's samples, summed
    else:
        registry.register(_ProcessRegistry())
    registry.register(_shard_collector())
    registry.register(SupervisorCollector())
    return registry


class _ProcessRegistry(Collector):
    """This process's own metrics, when not in multiprocess mode (e.g. a plain runserver)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def metrics(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token and not constant_time_compare(request.headers.get("Authorization", ""), f"Bearer {token}"):
        body = error_body("authentication_failed", "/metrics needs `Authorization: Bearer <metrics token>`.")
        return JsonResponse(body, status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
