from __future__ import annotations

import uuid

from django.db import connections

from apps.sharding.routing import alias_for_id


def held_minor(*, wallet_id: uuid.UUID) -> int:
    """Reserved on the wallet by holds still open (through the index of open holds)."""
    with connections[alias_for_id(wallet_id)].cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(sum(amount_minor), 0) FROM holds_hold WHERE payer_id = %s AND status = 'held'"
            " AND sharding_serves(id)",
            [wallet_id],
        )
        return int(cursor.fetchone()[0])
