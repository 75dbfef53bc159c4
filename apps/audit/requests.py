"""Operators' requests to a shard's reader (apps.audit.models.CdcRequest), as the reader sees them."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connections
from django.utils import timezone

from apps.audit.models import CdcRequest, CdcRequestState

log = logging.getLogger(__name__)


def pending(shard: str) -> CdcRequest | None:
    """The oldest pending request for `shard`; None if there is none or the control
    database does not answer (a request waits; the stream need not)."""
    try:
        connections["default"].close_if_unusable_or_obsolete()
        return CdcRequest.objects.filter(shard=shard, state=CdcRequestState.PENDING).order_by("id").first()
    except DatabaseError as exc:
        log.warning("cdc could not read operators' requests for %s: %s", shard, exc)
        connections["default"].close()
        return None


def finish(request: CdcRequest, *, ok: bool, result: str) -> None:
    request.state = CdcRequestState.DONE if ok else CdcRequestState.FAILED
    request.result = result[:2000]
    request.done_at = timezone.now()
    request.save(update_fields=["state", "result", "done_at"])
    log.log(logging.INFO if ok else logging.ERROR, "cdc %s of %s %s: %s", request.action, request.shard,
            request.state, result)  # fmt: skip
