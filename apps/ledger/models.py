"""The ledger on each shard: wallets and their applied entries.

`LedgerEntry` is both the wallet's history and its idempotency table (the seed's
approach 2): UNIQUE(wallet, reference, kind) means a deposit, withdrawal, debit,
credit or refund for one reference applies at most once, whatever is retried.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.db.models.functions import Collate


class WalletStatus(models.TextChoices):
    ACTIVE = "active"
    FROZEN = "frozen"


class AcceptsFrom(models.TextChoices):
    """Whose transfers a wallet takes (its owner's setting; the rule is apps.ledger.acceptance)."""

    ANY = "any"  # every client's
    SAME_CLIENT = "same_client"  # only its owner's (and refunds of what it paid, always)


class EntryKind(models.TextChoices):
    DEPOSIT = "deposit"  # money enters the system
    WITHDRAWAL = "withdrawal"  # money leaves the system
    DEBIT = "debit"  # a transfer takes money from its payer
    CREDIT = "credit"  # a transfer gives money to its payee
    REFUND = "refund"  # a failed transfer gives its debit back to the payer
    HOLD = "hold"  # a hold reserves money: out of the available balance, still the payer's
    RELEASE = "release"  # a hold's void, expiry or capture gives the reserved amount back


INFLOWS = [EntryKind.DEPOSIT, EntryKind.CREDIT, EntryKind.REFUND, EntryKind.RELEASE]
OUTFLOWS = [EntryKind.WITHDRAWAL, EntryKind.DEBIT, EntryKind.HOLD]


class Wallet(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    owner_id = models.BigIntegerField(help_text="The API client owning the wallet (on the control database).")
    currency = models.CharField(max_length=3)
    balance_minor = models.BigIntegerField(default=0)
    status = models.CharField(max_length=8, choices=WalletStatus.choices, default=WalletStatus.ACTIVE)
    last_entry_seq = models.BigIntegerField(default=0, help_text="Sequence number of the newest entry.")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    payer_may_refund = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Set by the owner: the client that paid a transfer into this wallet may refund it from here.",
    )
    description = models.TextField(null=True, blank=True, help_text="The owner's own text, as given (null: none).")
    metadata = models.JSONField(null=True, blank=True, help_text="The owner's own key-value notes (null: none).")
    accepts_from = models.CharField(
        max_length=11,
        choices=AcceptsFrom.choices,
        default=AcceptsFrom.ANY,
        db_default=AcceptsFrom.ANY,
        help_text="Set by the owner: whose transfers the wallet takes (any client's, or only its owner's).",
    )

    class Meta:
        db_table = "ledger_wallet"
        constraints = [
            models.CheckConstraint(condition=Q(balance_minor__gte=0), name="wallet_balance_non_negative"),
            models.CheckConstraint(
                condition=Q(accepts_from__in=[c.value for c in AcceptsFrom]), name="wallet_accepts_from_known"
            ),
        ]
        indexes = [models.Index(fields=["owner_id", "-id"], name="wallet_owner_newest")]

    def __str__(self) -> str:
        return f"wallet {self.id}"


class LedgerEntry(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    # Co-sharded with its wallet, so a real foreign key is fine.
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="entries")
    seq = models.BigIntegerField(help_text="1, 2, 3... per wallet, in the order entries were applied.")
    reference = models.CharField(max_length=255, help_text="Deposit/withdrawal idempotency key or transfer id.")
    kind = models.CharField(max_length=12, choices=EntryKind.choices)
    amount_minor = models.BigIntegerField(help_text="Signed: positive adds to the balance.")
    balance_after_minor = models.BigIntegerField()
    created_at = models.DateTimeField()

    class Meta:
        db_table = "ledger_entry"
        verbose_name_plural = "ledger entries"
        constraints = [
            models.UniqueConstraint(fields=["wallet", "reference", "kind"], name="entry_applied_once"),
            models.UniqueConstraint(fields=["wallet", "seq"], name="entry_seq_per_wallet"),
            models.CheckConstraint(
                condition=(Q(kind__in=INFLOWS) & Q(amount_minor__gt=0))
                | (Q(kind__in=OUTFLOWS) & Q(amount_minor__lt=0)),
                name="entry_sign_matches_kind",
            ),
            models.CheckConstraint(condition=Q(balance_after_minor__gte=0), name="entry_balance_after_non_negative"),
        ]
        indexes = [
            # A wallet's received transfers by transfer id (GET .../transfers?direction=in): credits
            # only, their reference (a transfer id) in byte order, which is the ids' order.
            models.Index(
                "wallet", Collate("reference", "C"), name="entry_credits_by_transfer", condition=Q(kind="credit")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_minor} on {self.wallet_id}"


class MovementKey(models.Model):
    """The first answer to a deposit or withdrawal, per (wallet, Idempotency-Key): success or refusal.

    Written in the transaction of the movement itself, so the key and its effect commit
    together; a repeat finds it and gets the same answer (or 422 for another amount or kind).
    Kept as long as the wallet's ledger entries (the key is also the entry's reference).
    """

    id = models.BigAutoField(primary_key=True)
    wallet_id = models.UUIDField()
    key = models.CharField(max_length=255)
    kind = models.CharField(max_length=12, choices=EntryKind.choices)
    amount_minor = models.BigIntegerField()
    response_status = models.SmallIntegerField(null=True)
    response_body = models.TextField(null=True, help_text="The exact JSON sent, so a replay is byte-identical.")
    created_at = models.DateTimeField()

    class Meta:
        db_table = "ledger_movement_key"
        constraints = [models.UniqueConstraint(fields=["wallet_id", "key"], name="movement_key_once")]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} on {self.wallet_id}"
