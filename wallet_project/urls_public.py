"""The public API's listener: the API, its schema and docs, and the health probes."""

from wallet_project.urls import api_patterns, handler404, handler500, health_patterns

urlpatterns = health_patterns + api_patterns

__all__ = ["handler404", "handler500", "urlpatterns"]
