"""Set up state through the services, as the API would."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from django.conf import settings
from rest_framework.test import APIClient

from apps.accounts.models import ApiClient
from apps.accounts.services import api_client_create
from apps.ledger.models import Wallet
from apps.ledger.services import wallet_create, wallet_fund
from apps.sharding.routing import shard_map
from tests.contract.schema import CheckedAPIClient

ALL_DATABASES = "__all__"


def make_client(name: str = "acme") -> tuple[ApiClient, str]:
    return api_client_create(name=name)


def api_for(key: str | None) -> APIClient:
    """A test client of the API with this key (or none); each response is held to the OpenAPI schema."""
    api = CheckedAPIClient()
    if key is not None:
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return api


def bucket_on(alias: str) -> int:
    return shard_map().buckets_of(alias)[0]


def make_wallet(owner: ApiClient, *, currency: str = "USD", funded: int = 0, shard: str | None = None) -> Wallet:
    wallet = wallet_create(owner_id=owner.id, currency=currency, bucket=bucket_on(shard) if shard is not None else None)
    if funded:
        wallet_fund(wallet_id=wallet.id, amount_minor=funded, reference=f"seed-{uuid.uuid4()}")
        wallet.refresh_from_db(using=wallet._state.db)
    return wallet


def raw_query(alias: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Query a shard over a fresh psycopg connection: no router, no Django in between."""
    db = settings.DATABASES[alias]
    conninfo = f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def balance_and_entry_count(wallet_id: uuid.UUID, alias: str) -> tuple[int, int]:
    [(balance,)] = raw_query(alias, "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [wallet_id])
    [(count,)] = raw_query(alias, "SELECT count(*) FROM ledger_entry WHERE wallet_id = %s", [wallet_id])
    return balance, count


# The project's own stacks listen in these bands (make run 25xxx, the test stacks 26xxx, the
# bench and chaos 29xxx); a port free now may be one a stack is about to bind (a test stack's
# audit endpoint, say), so none is handed out from them.
_STACK_BANDS = ((25000, 27000), (29000, 30000))


def free_port(low: int = 20000, high: int = 32000) -> int:
    """A free TCP port in [low, high), outside the project's stacks' bands unless the range lies in
    one; the default range is below Linux's ephemeral range, so no client connection can hold it
    as its source port."""
    import random
    import socket

    # A range asked for inside a band (a stack's own neighbours) is taken as asked.
    avoid = [(first, last) for first, last in _STACK_BANDS if not (first <= low and high <= last)]
    for _ in range(100):
        port = random.randrange(low, high)
        if any(first <= port < last for first, last in avoid):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def transfer_request(
    owner: ApiClient,
    payer: Wallet,
    payee_id: uuid.UUID,
    amount: int,
    *,
    currency: str = "USD",
    key: str = "",
    description: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Any:
    from apps.transfers.creation import TransferRequest

    return TransferRequest(
        client_id=owner.id,
        payer_id=payer.id,
        payee_id=payee_id,
        amount_minor=amount,
        currency=currency,
        idempotency_key=key or f"key-{uuid.uuid4()}",
        description=description,
        metadata=metadata,
    )


def create_transfer(owner: ApiClient, payer: Wallet, payee_id: uuid.UUID, amount: int, **kwargs: Any) -> Any:
    """Create a transfer through the service (first step included); returns the Transfer."""
    from apps.transfers.api.views import render_transfer
    from apps.transfers.creation import transfer_create

    return transfer_create(transfer_request(owner, payer, payee_id, amount, **kwargs), render=render_transfer).transfer


def wallet_balance(wallet_id: uuid.UUID) -> int:
    from apps.sharding.routing import alias_for_id

    [(balance,)] = raw_query(
        alias_for_id(wallet_id), "SELECT balance_minor FROM ledger_wallet WHERE id = %s", [wallet_id]
    )
    return balance


def entry_kinds(wallet_id: uuid.UUID) -> list[str]:
    from apps.sharding.routing import alias_for_id

    rows = raw_query(
        alias_for_id(wallet_id), "SELECT kind FROM ledger_entry WHERE wallet_id = %s ORDER BY seq", [wallet_id]
    )
    return [kind for (kind,) in rows]
