"""The operators' audit trail, on `default`: who did what to which wallet or transfer, when and why."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ActionKind(models.TextChoices):
    FREEZE_WALLET = "freeze_wallet"
    UNFREEZE_WALLET = "unfreeze_wallet"
    REDRIVE_TRANSFER = "redrive_transfer"
    COMPENSATE_TRANSFER = "compensate_transfer"
    VOID_HOLD = "void_hold"
    # From the command line (manage.py), on the stream or the shards as a whole.
    CDC_SKIP = "cdc_skip"
    CDC_RESNAPSHOT = "cdc_resnapshot"
    MOVE_BUCKETS = "move_buckets"
    SHARD_REPLAY = "shard_replay"


class ActionOutcome(models.TextChoices):
    PENDING = "pending"  # recorded before the shard write; stays so only if the process died meanwhile
    SUCCEEDED = "succeeded"
    REFUSED = "refused"  # a business rule said no (e.g. the transfer is already terminal); nothing changed
    FAILED = "failed"  # a shard was unreachable or the write errored


class OperatorAction(models.Model):
    """One operator action. Written before the action runs and completed after, so even an
    action whose process died half-way leaves a trace (outcome `pending`)."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    actor_username = models.CharField(
        max_length=150, help_text="Kept if the user is deleted; `command line: <login>@<host>` for manage.py."
    )
    action = models.CharField(max_length=32, choices=ActionKind.choices)
    target_id = models.UUIDField(null=True, blank=True, help_text="The wallet, transfer or hold acted on, if one.")
    subject = models.CharField(
        max_length=200, blank=True, default="", help_text="What a command acted on beyond one row: a move, a stream."
    )
    shard = models.CharField(max_length=32)
    reason = models.TextField()
    outcome = models.CharField(max_length=12, choices=ActionOutcome.choices, default=ActionOutcome.PENDING)
    detail = models.TextField(blank=True, default="", help_text="What happened, in words.")
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "operators_action"
        constraints = [models.CheckConstraint(condition=~Q(reason=""), name="operator_action_has_reason")]
        indexes = [models.Index(fields=["target_id", "-id"], name="operator_action_by_target")]
        permissions = [
            ("freeze_wallet", "Can freeze and unfreeze wallets"),
            ("redrive_transfer", "Can re-drive stalled or parked transfers"),
            ("compensate_transfer", "Can force-compensate transfers"),
            ("void_hold", "Can void holds"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_username}: {self.action} {self.target_id} ({self.outcome})"
