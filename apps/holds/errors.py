from __future__ import annotations

from typing import Any

from apps.common.errors import DomainError


class HoldNotFound(DomainError):
    code = "hold_not_found"
    status = 404
    default_message = "No such hold."


class HoldNotHeld(DomainError):
    """A capture, void or expiry found the hold already resolved: the first resolution won."""

    code = "hold_not_held"
    status = 409
    default_message = "The hold is no longer held."

    def __init__(self, hold: Any) -> None:
        when = f" at {hold.resolved_at:%Y-%m-%dT%H:%M:%S.%fZ}" if hold.resolved_at is not None else ""
        super().__init__(f"The hold is {hold.status}; it was resolved{when}.")
        self.hold = hold


class HoldExpired(DomainError):
    code = "hold_expired"
    status = 409
    default_message = "The hold expired: its amount is released, nothing can be captured."


class CaptureExceedsHold(DomainError):
    code = "capture_exceeds_hold"
    status = 422
    default_message = "A capture cannot exceed the amount held."
