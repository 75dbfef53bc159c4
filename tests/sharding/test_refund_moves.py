"""Refunds whose originals' bucket moves while they are requested and credited: each settles once, on the new owner."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from apps.refunds.models import Refund
from apps.sharding.routing import alias_for_id
from apps.transfers.checks import check_ledger
from apps.transfers.models import Transfer
from apps.transfers.saga import transfer_advance
from tests.factories import ALL_DATABASES, api_for, make_client
from tests.factories import wallet_balance as balance
from tests.sharding.moving import advance_in_flight, move_under_traffic, range_rows, wallet_in_bucket

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=ALL_DATABASES),
    pytest.mark.slow,
    pytest.mark.usefixtures("file_layout_afterwards"),
]


def test_refunds_are_requested_and_credited_while_their_range_moves() -> None:
    owner, key = make_client()
    inside = [wallet_in_bucket(owner, b, funded=100_000) for b in (0, 17, 40, 63)]
    outside = [wallet_in_bucket(owner, b, funded=100_000) for b in (200, 700)]
    wallets = inside + outside
    total = sum(balance(w.id) for w in wallets)
    api = api_for(key)
    assert api.get("/v1/wallets").status_code == 200  # loads the schema checker once, before the threads

    def pay(payer, payee, amount: int) -> str:
        body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": amount, "currency": "USD"}
        created = api_for(key).post("/v1/transfers?wait=5", body, format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
        transfer_id = created.json()["id"]
        if created.json()["status"] != "completed":
            transfer_advance(uuid.UUID(transfer_id))
        return transfer_id

    # Paid before the move, from inside the range to outside and back: the originals live in the moving range or not.
    originals = [pay(inside[i % 4], outside[i % 2], 1000) for i in range(6)]
    originals += [pay(outside[i % 2], inside[i % 4], 1000) for i in range(6)]
    # A refund requested before the move and credited after it, on the new owner.
    across = api.post(f"/v1/transfers/{originals[0]}/refunds", {"amount_minor": 100}, format="json",
                      HTTP_IDEMPOTENCY_KEY="across")  # fmt: skip
    assert across.status_code in (201, 202), across.content
    statuses: list[int] = []
    lock = threading.Lock()

    def traffic(stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        client = api_for(key)
        while not stop.is_set():
            original = rng.choice(originals)
            answer = client.post(f"/v1/transfers/{original}/refunds", {"amount_minor": rng.randint(1, 60)},
                                 format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))  # fmt: skip
            with lock:
                statuses.append(answer.status_code)
            time.sleep(0.01)

    done = move_under_traffic(traffic, 0, 63, "shard_01")
    assert done.state == "done"
    assert alias_for_id(uuid.UUID(originals[0])) == "shard_01"
    # Refunds that outran an original's amount are refused; anything else would be a fault.
    assert set(statuses) <= {201, 202, 409, 422}, sorted(set(statuses))
    assert statuses.count(201) + statuses.count(202) > 10
    advance_in_flight()
    assert sum(range_rows("shard_00", 0, 63).values()) == 0
    assert range_rows("shard_01", 0, 63)["refunds_refund"] > 0
    # Every refund settled once, on the shard that serves its original; never more than paid.
    for original_id in originals:
        original = Transfer.objects.using(alias_for_id(uuid.UUID(original_id))).get(id=original_id)
        refunds = list(Refund.objects.using(alias_for_id(original.id)).filter(original_id=original.id))
        assert all(r.status in ("succeeded", "failed") for r in refunds), [r.status for r in refunds]
        live = sum(r.amount_minor for r in refunds if r.status == "succeeded")
        assert original.amount_refunded == live <= original.amount_minor
    shown = api.get(f"/v1/transfers/{originals[0]}").json()
    assert any(r["id"] == across.json()["id"] and r["status"] == "succeeded" for r in shown["refunds"])
    assert sum(balance(w.id) for w in wallets) == total
    report = check_ledger()
    assert report.violations == []
    assert report.refunds > 10
