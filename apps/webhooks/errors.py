from __future__ import annotations

from apps.common.errors import DomainError


class EndpointNotFound(DomainError):
    code = "webhook_endpoint_not_found"
    status = 404
    default_message = "No such webhook endpoint."


class UrlNotAllowed(DomainError):
    code = "url_not_allowed"
    status = 400
    default_message = "This URL cannot receive webhooks."


class EndpointLimitReached(DomainError):
    code = "webhook_endpoint_limit_reached"
    status = 409
    default_message = "This client has as many webhook endpoints as it may have: delete one first."
