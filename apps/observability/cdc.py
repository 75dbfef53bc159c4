"""Hook for change-data-capture lag per shard, shown on the operations page and in /metrics.

The audit app (CDC reader, ClickHouse sink) owns the numbers. It plugs in by naming a
callable in `settings.CDC_LAG_PROVIDER` that returns {shard alias: lag in seconds}. Until
then CDC is "not configured" and no lag is reported (rather than a made-up zero).
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.utils.module_loading import import_string

CdcLagProvider = Callable[[], dict[str, float]]


def cdc_lag_provider() -> CdcLagProvider | None:
    path = getattr(settings, "CDC_LAG_PROVIDER", None)
    return import_string(path) if path else None


def cdc_lag_seconds() -> dict[str, float] | None:
    """Lag per shard in seconds, or None when CDC is not configured."""
    provider = cdc_lag_provider()
    return provider() if provider is not None else None
