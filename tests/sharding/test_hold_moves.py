"""Holds whose bucket moves while they are created, captured and voided: each ends once, on the new owner."""

from __future__ import annotations

import random
import threading
import uuid

import pytest

from apps.holds.models import Hold
from apps.sharding.routing import alias_for_id
from apps.transfers.checks import check_ledger
from tests.factories import ALL_DATABASES, api_for, make_client
from tests.factories import wallet_balance as balance
from tests.sharding.moving import advance_in_flight, move_under_traffic, range_rows, wallet_in_bucket

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=ALL_DATABASES),
    pytest.mark.slow,
    pytest.mark.usefixtures("file_layout_afterwards"),
]


def test_holds_are_created_captured_and_voided_while_their_range_moves() -> None:
    owner, key = make_client()
    inside = [wallet_in_bucket(owner, b, funded=100_000) for b in (0, 17, 40, 63)]
    outside = [wallet_in_bucket(owner, b, funded=100_000) for b in (200, 700)]
    wallets = inside + outside
    total = sum(balance(w.id) for w in wallets)
    statuses: list[int] = []
    outcomes: dict[str, tuple[str, int]] = {}  # hold id -> (what its thread did, amount captured)
    lock = threading.Lock()

    def traffic(stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        api = api_for(key)
        while not stop.is_set():
            payer, payee = rng.sample(wallets, 2)
            body = {"from": str(payer.id), "to": str(payee.id), "amount_minor": rng.randint(10, 500), "currency": "USD"}
            created = api.post("/v1/holds", body, format="json", HTTP_IDEMPOTENCY_KEY=str(uuid.uuid4()))
            with lock:
                statuses.append(created.status_code)
            if created.status_code != 201:
                continue
            hold = created.json()
            if rng.random() < 0.5:
                part = rng.randint(1, hold["amount_minor"])
                answer = api.post(f"/v1/holds/{hold['id']}/capture", {"amount_minor": part}, format="json")
                done = ("captured", part)
            else:
                answer = api.post(f"/v1/holds/{hold['id']}/void", {}, format="json")
                done = ("voided", 0)
            with lock:
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    outcomes[hold["id"]] = done

    api = api_for(key)
    assert api.get("/v1/wallets").status_code == 200  # loads the schema checker once, before the threads
    # Held across the move, resolved on the new owner afterwards.
    waiting = [
        api.post(
            "/v1/holds",
            {"from": str(inside[i].id), "to": str(wallets[i + 1].id), "amount_minor": 1000, "currency": "USD"},
            format="json", HTTP_IDEMPOTENCY_KEY=f"across-{i}",
        ).json()
        for i in range(3)
    ]  # fmt: skip
    done = move_under_traffic(traffic, 0, 63, "shard_01")
    assert done.state == "done"
    assert alias_for_id(uuid.UUID(waiting[0]["id"])) == "shard_01"
    captured = api.post(f"/v1/holds/{waiting[0]['id']}/capture", {"amount_minor": 600}, format="json")
    voided = api.post(f"/v1/holds/{waiting[1]['id']}/void", {}, format="json")
    assert (captured.status_code, voided.status_code) == (200, 200), (captured.content, voided.content)
    outcomes[waiting[0]["id"]], outcomes[waiting[1]["id"]] = ("captured", 600), ("voided", 0)
    assert api.get(f"/v1/holds/{waiting[2]['id']}").json()["status"] == "held"
    assert api.post(f"/v1/holds/{waiting[2]['id']}/void", {}, format="json").status_code == 200
    outcomes[waiting[2]["id"]] = ("voided", 0)
    assert set(statuses) <= {200, 201}, sorted(set(statuses))
    assert len(outcomes) > 10
    # Every hold ended as its request said, once, on the shard that now serves its bucket.
    for hold_id, (status, captured) in outcomes.items():
        hold = Hold.objects.using(alias_for_id(uuid.UUID(hold_id))).get(id=hold_id)
        assert (hold.status, hold.captured_minor or 0) == (status, captured)
    assert sum(range_rows("shard_00", 0, 63).values()) == 0
    assert range_rows("shard_01", 0, 63)["holds_hold"] > 0
    advance_in_flight()
    assert sum(balance(w.id) for w in wallets) == total
    report = check_ledger()
    assert report.violations == []
    assert report.totals["USD"].held == 0
