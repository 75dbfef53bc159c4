"""The operators' listener (SHARDWALLET_OPS_BIND): the admin, the operations page, /metrics, health."""

from wallet_project.urls import handler404, handler500, health_patterns, ops_patterns

urlpatterns = health_patterns + ops_patterns

__all__ = ["handler404", "handler500", "urlpatterns"]
