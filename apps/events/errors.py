from __future__ import annotations

from apps.common.errors import DomainError


class EventNotFound(DomainError):
    code = "event_not_found"
    status = 404
    default_message = "No such event."
