"""Transfers, their status history, idempotency records and payee outcomes, on the shards.

A transfer lives on its payer's shard (its id carries the payer's bucket), so the
debit and the transfer's status change commit in one local transaction. The payee's
shard holds a `PayeeCredit` per transfer: the single, final answer to "was the payee
credited or refused?", which makes a credit and a refund mutually exclusive.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class TransferStatus(models.TextChoices):
    PENDING = "pending"
    DEBITED = "debited"
    REFUNDING = "refunding"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL_STATUSES = (TransferStatus.COMPLETED, TransferStatus.FAILED)
IN_FLIGHT_STATUSES = (TransferStatus.PENDING, TransferStatus.DEBITED, TransferStatus.REFUNDING)


class FailureReason(models.TextChoices):
    INSUFFICIENT_FUNDS = "insufficient_funds"
    PAYER_FROZEN = "payer_frozen"
    PAYER_NOT_FOUND = "payer_not_found"
    PAYER_CURRENCY_MISMATCH = "payer_currency_mismatch"
    PAYEE_FROZEN = "payee_frozen"
    PAYEE_NOT_FOUND = "payee_not_found"
    PAYEE_CURRENCY_MISMATCH = "payee_currency_mismatch"
    PAYEE_BALANCE_LIMIT = "payee_balance_limit"
    OPERATOR_COMPENSATED = "operator_compensated"


class Transfer(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    client_id = models.BigIntegerField(help_text="The API client that created it (control database).")
    payer_id = models.UUIDField(help_text="Same shard as the transfer.")
    payee_id = models.UUIDField(help_text="Any shard: no foreign key.")
    amount_minor = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=10, choices=TransferStatus.choices, default=TransferStatus.PENDING)
    failure_reason = models.CharField(max_length=32, choices=FailureReason.choices, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64)
    attempts = models.IntegerField(
        default=0, help_text="Runs of its saga steps, counted before each (a drain's claim is the first)."
    )
    last_error = models.TextField(blank=True, default="")
    parked_at = models.DateTimeField(null=True, blank=True, help_text="Set when retries ran out: an operator decides.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    refund_of = models.UUIDField(
        null=True, blank=True, help_text="A refund: the completed transfer it pays back (on the payee's shard)."
    )
    amount_refunded = models.BigIntegerField(
        default=0,
        db_default=0,
        help_text="Reserved by its refunds that did not fail (pending or succeeded): never above amount_minor.",
    )
    description = models.TextField(null=True, blank=True, help_text="The client's own text, as given (null: none).")
    metadata = models.JSONField(null=True, blank=True, help_text="The client's own key-value notes (null: none).")

    class Meta:
        db_table = "transfers_transfer"
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="transfer_amount_positive"),
            models.CheckConstraint(
                condition=Q(amount_refunded__gte=0) & Q(amount_refunded__lte=models.F("amount_minor")),
                name="transfer_refunds_within_amount",
            ),
            models.CheckConstraint(condition=~Q(payer_id=models.F("payee_id")), name="transfer_not_to_self"),
            models.CheckConstraint(
                condition=Q(status="failed", failure_reason__isnull=False) | ~Q(status="failed"),
                name="failed_transfer_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["payer_id", "-id"], name="transfer_payer_newest"),
            # The sweeper's scan: only in-flight rows are indexed.
            models.Index(
                fields=["updated_at"],
                name="transfer_in_flight",
                condition=Q(status__in=["pending", "debited", "refunding"]),
            ),
            # A wallet's money in flight (every credit to it keeps room for it): debited rows only.
            models.Index(
                fields=["payer_id"],
                name="transfer_payer_in_flight",
                condition=Q(status__in=["debited", "refunding"]),
            ),
        ]

    def __str__(self) -> str:
        return f"transfer {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class TransferEvent(models.Model):
    """One row per status transition, written in the transition's transaction."""

    id = models.BigAutoField(primary_key=True)
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="events")
    from_status = models.CharField(max_length=10, null=True, blank=True)
    to_status = models.CharField(max_length=10)
    reason = models.CharField(max_length=32, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "transfers_event"
        indexes = [models.Index(fields=["transfer", "id"], name="event_per_transfer")]

    def __str__(self) -> str:
        return f"{self.transfer_id}: {self.from_status} -> {self.to_status}"


class IdempotencyRecord(models.Model):
    """The first response to a POST /v1/transfers, per (client, payer wallet, key); kept >= 24 h."""

    id = models.BigAutoField(primary_key=True)
    client_id = models.BigIntegerField()
    payer_id = models.UUIDField()
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    transfer = models.ForeignKey(Transfer, on_delete=models.PROTECT, related_name="+")
    response_status = models.SmallIntegerField(null=True, help_text="Null while the first request is in flight.")
    response_body = models.TextField(null=True, help_text="The exact JSON sent, so a replay is byte-identical.")
    created_at = models.DateTimeField()

    class Meta:
        db_table = "transfers_idempotency"
        constraints = [
            models.UniqueConstraint(fields=["client_id", "payer_id", "key"], name="idempotency_key_once"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_by_age")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.transfer_id}"


class CreditOutcome(models.TextChoices):
    CREDITED = "credited"
    REJECTED = "rejected"


class PayeeCredit(models.Model):
    """On the payee's shard: the final outcome of crediting one transfer. At most one per transfer."""

    transfer_id = models.UUIDField(primary_key=True)
    payee_id = models.UUIDField()
    amount_minor = models.BigIntegerField()
    outcome = models.CharField(max_length=8, choices=CreditOutcome.choices)
    reason = models.CharField(max_length=32, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "transfers_payee_credit"
        indexes = [models.Index(fields=["payee_id", "-transfer_id"], name="payee_credit_newest")]

    def __str__(self) -> str:
        return f"{self.transfer_id}: {self.outcome}"
