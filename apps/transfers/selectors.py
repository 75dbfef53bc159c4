"""Reads of transfers, from the payer's shard (where a transfer lives), and of the transfers a
wallet received, from its credits on its own shard."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Case, Value, When
from django.db.models.functions import Collate

from apps.ledger.models import EntryKind, LedgerEntry
from apps.ledger.services import in_flight_out_minor
from apps.sharding.fence import read_by_id
from apps.sharding.routing import alias_for_id
from apps.transfers.errors import TransferNotFound
from apps.transfers.models import Transfer, TransferEvent, TransferStatus
from apps.transfers.saga import Event


def transfer_get(*, transfer_id: uuid.UUID, client_id: int | None = None) -> Transfer:

    def read(alias: str) -> Transfer | None:
        transfers = (
            Transfer.objects.using(alias).filter(id=transfer_id).extra(where=["sharding_serves(transfers_transfer.id)"])
        )
        if client_id is not None:
            transfers = transfers.filter(client_id=client_id)
        return transfers.first()

    transfer = read_by_id(transfer_id, read)
    if transfer is None:
        raise TransferNotFound(param="transfer_id")
    return transfer


# A transfer's statuses only ever move forward, each reached at most once: its history is
# ordered by the status each event reached (then time), never by serial ids, which are per shard
# (a transfer that moved to a shard of lower ids would list its later events first).
_STATUS_ORDER = Case(
    *(When(to_status=status, then=Value(rank)) for rank, status in enumerate(
        [TransferStatus.PENDING, TransferStatus.DEBITED, TransferStatus.REFUNDING]
    )),
    default=Value(3),
)  # fmt: skip


def transfer_events(*, transfer_id: uuid.UUID) -> list[TransferEvent]:
    events = TransferEvent.objects.using(alias_for_id(transfer_id)).filter(transfer_id=transfer_id)
    return list(events.order_by(_STATUS_ORDER, "created_at", "id"))


def transfer_history(*, transfer_id: uuid.UUID) -> list[Event]:
    return [Event(e.from_status, e.to_status, e.reason, e.created_at) for e in transfer_events(transfer_id=transfer_id)]


def transfer_list(*, payer_id: uuid.UUID, before_id: uuid.UUID | None, limit: int) -> list[Transfer]:
    """Transfers paid by a wallet, newest first (ids are time-ordered)."""
    transfers = Transfer.objects.using(alias_for_id(payer_id)).filter(payer_id=payer_id)
    if before_id is not None:
        transfers = transfers.filter(id__lt=before_id)
    return list(transfers.order_by("-id")[:limit])


@dataclass(frozen=True)
class ReceivedTransfer:
    """A transfer into a wallet, as its credit says it (all its owner may see of another's transfer)."""

    transfer_id: uuid.UUID
    wallet_id: uuid.UUID
    entry_id: uuid.UUID
    amount_minor: int
    currency: str
    credited_at: datetime


def received_list(
    *, wallet_id: uuid.UUID, currency: str, before_id: uuid.UUID | None, limit: int
) -> list[ReceivedTransfer]:
    """Transfers credited to a wallet, newest transfer first: its credit entries, whose reference
    is the transfer's id (in byte order under the C collation: the ids' order)."""
    credits = (
        LedgerEntry.objects.using(alias_for_id(wallet_id))
        .filter(wallet_id=wallet_id, kind=EntryKind.CREDIT)
        .annotate(transfer_key=Collate("reference", "C"))
    )
    if before_id is not None:
        credits = credits.filter(transfer_key__lt=str(before_id))
    rows = credits.order_by("-transfer_key").values_list("reference", "id", "amount_minor", "created_at")[:limit]
    return [
        ReceivedTransfer(uuid.UUID(reference), wallet_id, entry_id, amount, currency, at)
        for reference, entry_id, amount, at in rows
    ]


def pending_out_minor(*, wallet_id: uuid.UUID) -> int:
    """Debited from the wallet by transfers not yet completed or refunded."""
    return in_flight_out_minor(alias_for_id(wallet_id), wallet_id)
