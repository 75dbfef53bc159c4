"""Refunds of completed transfers, recorded on the original transfer's shard.

A refund is a new transfer from the original's payee back to its payer (`refund_of` on it),
run by the saga like any transfer. Its record here, beside the original (the original's
bucket in its id), is the reservation that keeps the sum of refunds within the amount paid:
it is inserted in the transaction that raises the original's `amount_refunded`, guarded in
SQL, and settled once: `succeeded` when the original payer is credited, `failed` (and the
reservation given back) when the refund's debit is refused or its credit rejected. The
credit and the settlement share a transaction, since the original payer's wallet, the
original and this record are in one bucket.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class RefundStatus(models.TextChoices):
    PENDING = "pending"  # reserved; the refund transfer is being created or runs
    SUCCEEDED = "succeeded"  # the original payer was credited
    FAILED = "failed"  # refused (the payee's funds, frozen...) or rejected: nothing moved, reservation released


class Refund(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    original_id = models.UUIDField(help_text="The refunded transfer (same shard, same bucket).")
    transfer_id = models.UUIDField(unique=True, help_text="The refund's own transfer (on the original payee's shard).")
    client_id = models.BigIntegerField(help_text="The API client that asked for it.")
    amount_minor = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    failure_reason = models.CharField(max_length=32, null=True, blank=True)
    idempotency_key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    response_status = models.SmallIntegerField(null=True, help_text="Null until the first request answered.")
    response_body = models.TextField(null=True, help_text="The exact JSON first sent, so a replay is byte-identical.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "refunds_refund"
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="refund_amount_positive"),
            models.CheckConstraint(
                condition=Q(status="failed", failure_reason__isnull=False) | ~Q(status="failed"),
                name="failed_refund_has_reason",
            ),
            models.UniqueConstraint(fields=["client_id", "original_id", "idempotency_key"], name="refund_key_once"),
        ]
        indexes = [
            models.Index(fields=["original_id", "created_at"], name="refund_per_original"),
            # The resumption job's scan: pending refunds only.
            models.Index(fields=["created_at"], name="refund_pending", condition=Q(status="pending")),
        ]

    def __str__(self) -> str:
        return f"refund {self.transfer_id} of {self.original_id} ({self.status})"
