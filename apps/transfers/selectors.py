"""Reads of transfers, from the payer's shard (where a transfer lives)."""

from __future__ import annotations

import uuid

from apps.ledger.services import in_flight_out_minor
from apps.sharding.routing import alias_for_id, read_by_id
from apps.transfers.errors import TransferNotFound
from apps.transfers.models import Transfer, TransferEvent
from apps.transfers.saga import Event


def transfer_get(*, transfer_id: uuid.UUID, client_id: int | None = None) -> Transfer:

    def read(alias: str) -> Transfer | None:
        transfers = Transfer.objects.using(alias).filter(id=transfer_id)
        if client_id is not None:
            transfers = transfers.filter(client_id=client_id)
        return transfers.first()

    transfer = read_by_id(transfer_id, read)
    if transfer is None:
        raise TransferNotFound(param="transfer_id")
    return transfer


def transfer_events(*, transfer_id: uuid.UUID) -> list[TransferEvent]:
    return list(TransferEvent.objects.using(alias_for_id(transfer_id)).filter(transfer_id=transfer_id).order_by("id"))


def transfer_history(*, transfer_id: uuid.UUID) -> list[Event]:
    return [Event(e.from_status, e.to_status, e.reason, e.created_at) for e in transfer_events(transfer_id=transfer_id)]


def transfer_list(*, payer_id: uuid.UUID, before_id: uuid.UUID | None, limit: int) -> list[Transfer]:
    """Transfers paid by a wallet, newest first (ids are time-ordered)."""
    transfers = Transfer.objects.using(alias_for_id(payer_id)).filter(payer_id=payer_id)
    if before_id is not None:
        transfers = transfers.filter(id__lt=before_id)
    return list(transfers.order_by("-id")[:limit])


def pending_out_minor(*, wallet_id: uuid.UUID) -> int:
    """Debited from the wallet by transfers not yet completed or refunded."""
    return in_flight_out_minor(alias_for_id(wallet_id), wallet_id)
