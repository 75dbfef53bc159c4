"""The outbox: one row per change a client can be told about, on the shard of the object it is about.

A row is written by a trigger in the transaction of the change itself (a transfer's status,
a deposit, a withdrawal or a credit to a wallet, a wallet frozen or unfrozen, a hold's
status), so no change commits without its event and no event without its change, whatever
code path made it. The id is time-ordered and carries the bucket of the row that caused it,
so the event moves with that bucket. `seq` orders the events of one object (1, 2, 3...):
ids minted in the same millisecond are not ordered among themselves.
"""

from __future__ import annotations

from django.contrib.postgres.indexes import BrinIndex
from django.db import models

# Every event type, with what its `data.object` is.
EVENT_TYPES: dict[str, str] = {
    "transfer.created": "a transfer, stored as pending (its first step runs after)",
    "transfer.debited": "a transfer whose payer was debited; the payee, on another shard, is credited next",
    "transfer.refunding": "a transfer whose credit was refused: the payer's money is on its way back",
    "transfer.completed": "a transfer that reached its payee",
    "transfer.failed": "a transfer that failed: nothing moved, or the payer got its money back",
    "transfer.received": "a credit entry: a transfer paid one of your wallets (the entry, not the transfer)",
    "deposit.succeeded": "a deposit's ledger entry",
    "withdrawal.succeeded": "a withdrawal's ledger entry",
    "wallet.created": "a wallet",
    "wallet.frozen": "a wallet that was frozen",
    "wallet.unfrozen": "a wallet that was unfrozen",
    "hold.created": "a hold, held",
    "hold.failed": "a hold refused at creation (funds, frozen payer...)",
    "hold.captured": "a hold captured (its `transfer_id` is the capture's transfer)",
    "hold.voided": "a hold voided",
    "hold.expired": "a hold that expired",
}


class Event(models.Model):
    id = models.UUIDField(primary_key=True, editable=False)
    client_id = models.BigIntegerField(help_text="The API client the event is for (control database).")
    type = models.CharField(max_length=40)
    object_id = models.UUIDField(help_text="The id of the object in `data`.")
    seq = models.IntegerField(help_text="1, 2, 3... per object, in the order of its changes.")
    data = models.TextField(
        null=True,
        help_text="The object as the API renders it, at the change (JSON); null for a ledger entry's event, whose"
        " entry never changes and is rendered when read.",
    )
    created_at = models.DateTimeField()
    txid = models.BigIntegerField(help_text="The writing transaction's id: the dispatcher's cursor follows it.")

    class Meta:
        db_table = "events_event"
        constraints = [models.UniqueConstraint(fields=["object_id", "seq"], name="event_object_seq")]
        indexes = [
            models.Index(fields=["client_id", "-id"], name="event_client_newest"),
            # The dispatcher's cursor (apps.events.outbox_sql) reads the newest events by txid, which
            # grows with the table: a block-range index finds them for next to no upkeep per insert.
            BrinIndex(fields=["txid"], name="event_dispatch_order", autosummarize=True),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.object_id} #{self.seq}"
