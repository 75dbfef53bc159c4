"""Command-line operator actions are in the operators' trail like the admin's, with their outcome."""

from __future__ import annotations

import getpass
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.operators.models import OperatorAction
from apps.sharding.ids import new_id
from tests.factories import ALL_DATABASES, make_client
from tests.operators.helpers import cross_shard_pair, parked_transfer

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


def trail() -> list[OperatorAction]:
    return list(OperatorAction.objects.using("default").order_by("id"))


def test_redrive_from_the_command_line_is_recorded_with_its_reason_and_outcome() -> None:
    owner, _ = make_client()
    payer, payee = cross_shard_pair(owner, funded=1000)
    transfer = parked_transfer(owner, payer, payee.id, 200)
    out = StringIO()
    call_command("redrive_transfer", str(transfer.id), "--reason", "shard_01 is back", stdout=out)
    with pytest.raises(CommandError, match="not in flight"):
        call_command("redrive_transfer", str(new_id(0)), "--reason", "typo", stdout=StringIO())
    outside = new_id(4000)  # a bucket past the map's 1,024: no shard holds such an id
    with pytest.raises(CommandError, match="not an id of this deployment's buckets"):
        call_command("redrive_transfer", str(outside), "--reason", "pasted from elsewhere", stdout=StringIO())
    done, refused, foreign = trail()
    assert (done.action, done.outcome, done.target_id, done.reason) == (
        "redrive_transfer", "succeeded", transfer.id, "shard_01 is back",
    )  # fmt: skip
    assert done.actor is None
    assert done.actor_username.startswith(f"command line: {getpass.getuser()}@")
    assert f"operator action {done.id}" in out.getvalue()
    assert (refused.action, refused.outcome) == ("redrive_transfer", "refused")
    assert (foreign.target_id, foreign.shard, foreign.outcome) == (outside, "", "refused")


def test_stream_and_move_commands_are_recorded_refusals_included() -> None:
    out = StringIO()
    call_command("cdc_resnapshot", "shard_01", "--reason", "slot lost in a drill", "--wait", "0", stdout=out)
    with pytest.raises(CommandError, match="no shard 'shard_77'"):
        call_command("cdc_skip", "shard_77", "0/16B3748", "--reason", "wrong shard", "--wait", "0")
    with pytest.raises(CommandError, match="no move is active"):
        call_command("move_buckets", "--abort", "--reason", "drill", stdout=StringIO())
    resnapshot, skip, abort = trail()
    assert (resnapshot.action, resnapshot.shard, resnapshot.outcome) == ("cdc_resnapshot", "shard_01", "succeeded")
    assert "filed" in resnapshot.detail
    assert (skip.action, skip.subject, skip.outcome) == ("cdc_skip", "transaction at 0/16B3748", "refused")
    assert (abort.action, abort.subject, abort.outcome, abort.detail) == (
        "move_buckets", "--abort", "refused", "no move is active",
    )  # fmt: skip
    assert all(record.finished_at is not None for record in (resnapshot, skip, abort))
