from apps.common.errors import DomainError


class TransferNotFound(DomainError):
    code = "transfer_not_found"
    status = 404
    default_message = "No such transfer."


class IdempotencyRequestInProgress(DomainError):
    code = "idempotency_request_in_progress"
    status = 409
    default_message = "A request with this Idempotency-Key is still being processed; retry shortly."


class StaleTransition(RuntimeError):
    """The transfer was no longer in the expected status: another step got there first."""


class TransferNotInFlight(DomainError):
    code = "transfer_not_in_flight"
    status = 409
    default_message = "The transfer is already completed or failed."


class ShardUnavailable(DomainError):
    code = "shard_unavailable"
    status = 503
    default_message = "A shard is unreachable; nothing was changed. Retry when it is back."
