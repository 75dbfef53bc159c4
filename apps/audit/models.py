"""Operators' requests to the CDC process, on `default` (the control database).

The CDC process may run on another host and, in embedded mode, is the only process that
may open the audit store, so an operator's command does not act itself: it files a request
here, which the reader of that shard carries out (and records in the store) the next time
it looks, and marks done or failed.
"""

from __future__ import annotations

from django.db import models


class CdcAction(models.TextChoices):
    # Drop the shard's slot (if any), take a new one and a new snapshot, mark the rows the
    # snapshot no longer has as deleted, and record the WAL range never read as a gap.
    RESNAPSHOT = "resnapshot"
    # Leave out the one transaction at `commit_lsn` the reader cannot decode; record it as a gap.
    SKIP = "skip"


class CdcRequestState(models.TextChoices):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class CdcRequest(models.Model):
    shard = models.CharField(max_length=63)
    action = models.CharField(max_length=16, choices=CdcAction.choices)
    commit_lsn = models.BigIntegerField(null=True, blank=True, help_text="For skip: the transaction's commit LSN.")
    reason = models.TextField(help_text="Why, in the operator's words; kept with the gap in the audit store.")
    requested_by = models.CharField(max_length=150)
    state = models.CharField(max_length=16, choices=CdcRequestState.choices, default=CdcRequestState.PENDING)
    result = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["shard", "state"], name="cdc_request_pending")]

    def __str__(self) -> str:
        return f"{self.action} {self.shard} ({self.state})"
