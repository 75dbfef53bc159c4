"""GET /metrics: Prometheus text format, merged across processes, plus gauges read from the shards."""

from __future__ import annotations

import os
from collections.abc import Iterable

from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from apps.observability.collectors import ShardCollector, SupervisorCollector


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # every gunicorn and Celery process's samples, summed
    else:
        registry.register(_ProcessRegistry())
    registry.register(ShardCollector())
    registry.register(SupervisorCollector())
    return registry


class _ProcessRegistry(Collector):
    """This process's own metrics, when not in multiprocess mode (e.g. a plain runserver)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def metrics(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
