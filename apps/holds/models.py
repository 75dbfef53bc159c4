"""Holds (two-phase transfers): money reserved on the payer's wallet, captured or released later.

A hold lives on its payer's shard, with the payer's bucket in its id. Creating one moves the
amount out of the wallet's available balance with a `hold` entry (like a debit, guarded the
same way); voiding or expiring it gives it back with a `release` entry; capturing it gives
it back and debits the captured part as a transfer to the payee, in the same transaction,
so the saga then credits the payee like any transfer (cross-shard included). Each hold is
resolved at most once: every resolution locks the row and requires `status = 'held'`, and
the release entry is unique per (wallet, hold, kind).
"""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q


class HoldStatus(models.TextChoices):
    HELD = "held"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"
    FAILED = "failed"  # refused at creation (funds, frozen): nothing was held


RESOLVED_STATUSES = (HoldStatus.CAPTURED, HoldStatus.VOIDED, HoldStatus.EXPIRED)


class Hold(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    client_id = models.BigIntegerField()
    payer_id = models.UUIDField()
    payee_id = models.UUIDField()
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10, choices=HoldStatus.choices)
    failure_reason = models.CharField(max_length=32, null=True, blank=True)
    captured_minor = models.BigIntegerField(null=True, blank=True)
    transfer_id = models.UUIDField(null=True, blank=True, help_text="The capture's transfer (same shard).")
    resolution_note = models.CharField(max_length=500, blank=True, default="")
    idempotency_key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    response_status = models.SmallIntegerField()
    response_body = models.TextField(help_text="The exact JSON first sent, so a replay is byte-identical.")
    expires_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "holds_hold"
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="hold_amount_positive"),
            models.CheckConstraint(condition=~Q(payer_id=F("payee_id")), name="hold_not_to_self"),
            models.CheckConstraint(
                condition=Q(captured_minor__isnull=True)
                | (Q(captured_minor__gt=0) & Q(captured_minor__lte=F("amount_minor"))),
                name="hold_capture_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="failed", failure_reason__isnull=False) | ~Q(status="failed"),
                name="failed_hold_has_reason",
            ),
            models.CheckConstraint(
                condition=Q(status="captured", captured_minor__isnull=False, transfer_id__isnull=False)
                | (~Q(status="captured") & Q(captured_minor__isnull=True)),
                name="captured_hold_has_transfer",
            ),
            models.UniqueConstraint(fields=["client_id", "payer_id", "idempotency_key"], name="hold_key_once"),
        ]
        indexes = [
            models.Index(fields=["payer_id", "-id"], name="hold_payer_newest"),
            # The expiry job's scan and a wallet's held sum: open holds only.
            models.Index(fields=["expires_at"], name="hold_open_by_expiry", condition=Q(status="held")),
            models.Index(fields=["payer_id"], name="hold_open_by_payer", condition=Q(status="held")),
        ]

    def __str__(self) -> str:
        return f"hold {self.id} ({self.status})"
