"""Operators' commands to the CDC: file a request (apps.audit.models) and wait for the reader's answer."""

from __future__ import annotations

import getpass
import time

from django.core.management.base import CommandError

from apps.audit.models import CdcAction, CdcRequest, CdcRequestState
from apps.sharding.routing import shard_map


def file_request(
    shard: str, action: CdcAction, *, reason: str, by: str, wait: float, commit_lsn: int | None = None
) -> str:
    """File the request; with `wait`, return the reader's result or raise if it failed or did not answer."""
    if shard not in shard_map().shards:
        raise CommandError(f"no shard {shard!r} in the shard map ({', '.join(shard_map().aliases)})")
    if not reason.strip():
        raise CommandError("say why (--reason): it is kept with the gap")
    request = CdcRequest.objects.create(
        shard=shard, action=action, commit_lsn=commit_lsn, reason=reason, requested_by=by or getpass.getuser()
    )
    if wait <= 0:
        return f"request {request.id} filed: the reader of {shard} carries it out when it next looks"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        request.refresh_from_db()
        if request.state == CdcRequestState.DONE:
            return f"{action} of {shard} done: {request.result}"
        if request.state == CdcRequestState.FAILED:
            raise CommandError(f"{action} of {shard} failed: {request.result}")
        time.sleep(0.5)
    raise CommandError(
        f"request {request.id} is still pending after {wait:.0f}s: is run_cdc running? It stays filed and is"
        " carried out when the reader of the shard next looks"
    )
