"""Staff users in roles, parked transfers, and Prometheus text parsing for the operator tests."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import Group, User
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.models import ApiClient
from apps.ledger.models import Wallet
from apps.transfers.models import Transfer
from apps.transfers.services import transfer_park
from tests.factories import create_transfer, make_wallet

PASSWORD = "correct horse battery staple"


def make_staff(username: str, group: str | None) -> User:
    """A staff user in `group` (operators, viewers, auditors), or a superuser when group is None."""
    if group is None:
        return User.objects.db_manager("default").create_superuser(username, f"{username}@example.com", PASSWORD)
    user = User.objects.db_manager("default").create_user(username, f"{username}@example.com", PASSWORD, is_staff=True)
    user.groups.add(Group.objects.using("default").get(name=group))
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def cross_shard_pair(owner: ApiClient, funded: int = 1000) -> tuple[Wallet, Wallet]:
    return make_wallet(owner, funded=funded, shard="shard_00"), make_wallet(owner, shard="shard_01")


def parked_transfer(owner: ApiClient, payer: Wallet, payee_id: uuid.UUID, amount: int) -> Transfer:
    """A cross-shard transfer debited through the service, then parked as the task does when
    retries run out (no worker runs: its queued message is flushed by the caller's fixture)."""
    transfer = create_transfer(owner, payer, payee_id, amount)
    assert transfer.status == "debited"
    assert transfer_park(transfer.id, "OperationalError: connection refused (test)")
    return Transfer.objects.using("shard_00").get(id=transfer.id)


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from Prometheus text."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[Any, float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )
