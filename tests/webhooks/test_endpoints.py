"""The endpoints API, the URL guard (SSRF), the dispatcher's idempotence and disablement."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.utils import timezone

from apps.events.models import Event
from apps.events.rendering import with_objects
from apps.ledger.services import wallet_fund
from apps.webhooks import delivering, outbound
from apps.webhooks.delivering import record
from apps.webhooks.dispatch import dispatch_shard, queue_deliveries
from apps.webhooks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.factories import ALL_DATABASES, api_for, make_client, make_wallet, raw_query
from tests.operators.helpers import logged_in, make_staff
from tests.polling import wait_until
from tests.webhooks.receiver import Behaviour, Receiver

pytestmark = pytest.mark.django_db(transaction=True, databases=ALL_DATABASES)


@pytest.fixture
def receiver() -> Any:
    opened = Receiver()
    yield opened
    opened.close()


def one_delivery(api: Any, owner: Any, url: str) -> tuple[str, WebhookDelivery]:
    """An endpoint for every event type at `url`, and the delivery of one event to it (a wallet's creation)."""
    endpoint_id = api.post("/v1/webhook_endpoints", {"url": url, "event_types": ["*"]}, format="json").json()["id"]
    make_wallet(owner, shard="shard_00")
    dispatch_shard("shard_00")
    [delivery] = WebhookDelivery.objects.filter(endpoint_id=endpoint_id).select_related("endpoint")
    return endpoint_id, delivery


def test_register_list_change_and_delete_an_endpoint(receiver) -> None:
    _, key = make_client()
    api = api_for(key)
    created = api.post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["transfer.completed"]},
                       format="json").json()  # fmt: skip
    assert created["secret"].startswith("whsec_")
    assert created["status"] == "enabled"
    shown = api.get(f"/v1/webhook_endpoints/{created['id']}").json()
    assert "secret" not in shown  # shown once
    assert [e["id"] for e in api.get("/v1/webhook_endpoints").json()["data"]] == [created["id"]]
    changed = api.patch(f"/v1/webhook_endpoints/{created['id']}", {"event_types": ["*"], "status": "disabled"},
                        format="json").json()  # fmt: skip
    assert (changed["event_types"], changed["status"], changed["disabled_reason"]) == (
        ["*"], "disabled", "disabled by its client"
    )  # fmt: skip
    # Another client sees none of it.
    _, other_key = make_client("other")
    assert api_for(other_key).get(f"/v1/webhook_endpoints/{created['id']}").status_code == 404
    assert api_for(other_key).delete(f"/v1/webhook_endpoints/{created['id']}").status_code == 404
    assert api.delete(f"/v1/webhook_endpoints/{created['id']}").status_code == 204
    assert api.get(f"/v1/webhook_endpoints/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"url": "ftp://example.com/x", "event_types": ["*"]}, "url_not_allowed", "url"),
        ({"url": "https://user:pw@example.com/x", "event_types": ["*"]}, "url_not_allowed", "url"),
        ({"url": "https://example.com/x", "event_types": ["transfer.exploded"]}, "parameter_invalid", "event_types"),
        ({"url": "https://example.com/x", "event_types": []}, "parameter_invalid", "event_types"),
        ({"event_types": ["*"]}, "parameter_missing", "url"),
    ],
)
def test_bad_registrations_are_refused_and_change_nothing(body, code, param) -> None:
    owner, key = make_client()
    answer = api_for(key).post("/v1/webhook_endpoints", body, format="json")
    assert answer.status_code == 400, answer.content
    assert (answer.json()["error"]["code"], answer.json()["error"]["param"]) == (code, param)
    assert not WebhookEndpoint.objects.filter(client=owner).exists()


def _post_once(url: str, body: bytes, headers: dict[str, str]) -> outbound.Outcome:
    """One POST on a connection of its own."""
    with outbound.EndpointSession(url) as session:
        return session.post(body, headers)


def test_private_addresses_are_refused_unless_allowed(settings, receiver) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    _, key = make_client()
    api = api_for(key)
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://169.254.169.254/latest",
                "http://[::1]/x", "http://[::ffff:127.0.0.1]/x"):  # fmt: skip
        answer = api.post("/v1/webhook_endpoints", {"url": url, "event_types": ["*"]}, format="json")
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "url_not_allowed"), url
    # A name (checked at each delivery, not at registration) that resolves to a private address.
    name = socket.gethostname()  # this machine's name: a loopback or private address
    assert not ipaddress.ip_address(socket.gethostbyname(name)).is_global
    outcome = _post_once(f"http://{name}:{receiver.server.server_address[1]}/x", b"{}", {})
    assert outcome.status_code is None
    assert "non-public" in outcome.error
    assert receiver.received == []
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    assert _post_once(receiver.url, b"{}", {}).ok


def test_redirects_are_not_followed_and_answers_are_capped(settings) -> None:
    target = Receiver()
    redirecting = Receiver(Behaviour(status=302, extra_headers={"Location": target.url}))
    big = Receiver(Behaviour(body=b"x" * 1_000_000))
    try:
        redirected = _post_once(redirecting.url, b"{}", {})
        assert (redirected.status_code, redirected.ok, target.received) == (302, False, [])
        settings.WEBHOOK_MAX_RESPONSE_BYTES = 1000
        capped = _post_once(big.url, b"{}", {})
        assert capped.ok
        assert len(capped.excerpt) <= 500
    finally:
        for server in (target, redirecting, big):
            server.close()


def test_a_dispatch_repeated_after_a_crash_queues_each_delivery_once(receiver) -> None:
    owner, key = make_client()
    api_for(key).post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["*"]}, format="json")
    wallet = make_wallet(owner, shard="shard_00")
    wallet_fund(wallet_id=wallet.id, amount_minor=10, reference="d")
    events = with_objects("shard_00", list(Event.objects.using("shard_00").filter(client_id=owner.id)))
    assert {e.type for e in events} == {"wallet.created", "deposit.succeeded"}
    queue_deliveries(events)  # a dispatcher that queued, then died before moving the cursor
    assert dispatch_shard("shard_00") == 2  # the next one hands them over again ...
    assert WebhookDelivery.objects.filter(endpoint__client=owner).count() == 2  # ... and adds nothing twice
    [(cursor,)] = raw_query("shard_00", "SELECT txid FROM events_dispatch_cursor")
    assert cursor >= max(e.txid for e in events)
    assert dispatch_shard("shard_00") == 0  # the cursor is past them


def test_the_dispatcher_reads_only_subscribed_clients_events_and_hands_over_every_one_in_batches(receiver) -> None:
    quiet, _ = make_client("no-endpoint")
    loud, key = make_client("endpoint")
    make_wallet(quiet, shard="shard_00")
    [(before,)] = raw_query("shard_00", "SELECT pg_current_xact_id()::text::bigint")
    # No client has an endpoint: nothing is read, the cursor moves to the horizon.
    assert dispatch_shard("shard_00") == 0
    [(txid, last_id)] = raw_query("shard_00", "SELECT txid, event_id FROM events_dispatch_cursor")
    assert txid >= before
    assert last_id.int == 2**128 - 1  # past every event of that transaction id

    api_for(key).post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["*"]}, format="json")
    wallet = make_wallet(loud, shard="shard_00")
    make_wallet(quiet, shard="shard_00")
    for n in range(4):
        wallet_fund(wallet_id=wallet.id, amount_minor=10, reference=f"d-{n}")
    assert dispatch_shard("shard_00", batch=2) == 5  # in batches of two: every one of the subscribed client's
    queued = WebhookDelivery.objects.filter(endpoint__client=loud).values_list("event_id", flat=True)
    expected = Event.objects.using("shard_00").filter(client_id=loud.id).values_list("id", flat=True)
    assert set(queued) == set(expected)
    assert not WebhookDelivery.objects.filter(endpoint__client=quiet).exists()
    assert dispatch_shard("shard_00") == 0


def _deliveries_to(receiver: Receiver, count: int) -> tuple[Any, list[str]]:
    """An endpoint at `receiver` and `count` events of its client handed over (a wallet's creation, deposits)."""
    owner, key = make_client()
    endpoint_id = (
        api_for(key)
        .post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["*"]}, format="json")
        .json()["id"]
    )
    wallet = make_wallet(owner, shard="shard_00")
    for n in range(count - 1):
        wallet_fund(wallet_id=wallet.id, amount_minor=1, reference=f"d-{n}")
    assert dispatch_shard("shard_00") == count
    return endpoint_id, [str(e) for e in Event.objects.using("shard_00").filter(client_id=owner.id)
                         .order_by("created_at", "seq").values_list("id", flat=True)]  # fmt: skip


@pytest.mark.parametrize("close_after_each", [False, True])
def test_a_turn_sends_over_one_kept_alive_connection_and_records_its_successes_together(
    monkeypatch: pytest.MonkeyPatch, close_after_each: bool
) -> None:
    monkeypatch.setattr(delivering, "RECORD_EVERY", 7)
    receiver = Receiver(Behaviour(keep_alive=True, close_after_each=close_after_each))
    try:
        endpoint_id, events = _deliveries_to(receiver, 20)
        assert delivering.send_due(limit=200) == 20
    finally:
        receiver.close()
    assert sorted(receiver.accepted_ids()) == sorted(events)  # each once
    ports = {r.client_port for r in receiver.received}
    assert len(ports) == (20 if close_after_each else 1)  # a receiver that closes it gets a new one each time
    deliveries = WebhookDelivery.objects.filter(endpoint_id=endpoint_id)
    assert sorted(deliveries.values_list("status", "attempts", "last_status_code").distinct()) == [
        ("succeeded", 1, 200)
    ]
    times = WebhookAttempt.objects.filter(delivery__endpoint_id=endpoint_id, error="").values_list("at", flat=True)
    assert len(set(times)) == 20  # each attempt at its own answer's time, not its chunk's


def test_a_failure_mid_turn_records_the_successes_before_it_and_hands_the_rest_back() -> None:
    receiver = Receiver(Behaviour(keep_alive=True, fail_nth=5))
    try:
        endpoint_id, events = _deliveries_to(receiver, 10)
        assert delivering.send_due(limit=200) == 5
    finally:
        receiver.close()
    by_event = {str(d.event_id): d for d in WebhookDelivery.objects.filter(endpoint_id=endpoint_id)}
    states = [(by_event[e].status, by_event[e].attempts) for e in events]
    assert states == [("succeeded", 1)] * 4 + [("pending", 1)] + [("pending", 0)] * 5
    failed = by_event[events[4]]
    assert failed.last_status_code == 500
    assert {by_event[e].next_attempt_at for e in events[4:]} == {failed.next_attempt_at}  # the same retry
    assert WebhookEndpoint.objects.get(id=endpoint_id).consecutive_failures == 1


def test_the_dispatcher_waits_at_an_entry_event_whose_entry_has_not_arrived(receiver) -> None:
    """A move's first copy brings each table on its own: an entry's event (which stores no copy of
    the entry) may come first. The cursor stops before it, and goes on once the entry is there."""
    owner, key = make_client()
    api_for(key).post("/v1/webhook_endpoints", {"url": receiver.url, "event_types": ["*"]}, format="json")
    wallet = make_wallet(owner, shard="shard_00")
    entry_id = uuid.UUID(int=wallet.id.int + 1)  # the wallet's bucket: what a copied entry would carry
    with psycopg.connect(_conninfo("shard_00"), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events_event (id, client_id, type, object_id, seq, data, created_at, txid)"
            " VALUES (%s, %s, 'deposit.succeeded', %s, 1, NULL, now(), pg_current_xact_id()::text::bigint)",
            [uuid.UUID(int=wallet.id.int + 2), owner.id, entry_id],
        )
    wallet_fund(wallet_id=wallet.id, amount_minor=5, reference="after")
    assert dispatch_shard("shard_00") == 1  # the wallet's creation only: the rest waits behind the gap
    assert dispatch_shard("shard_00") == 0
    with psycopg.connect(_conninfo("shard_00"), autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")  # as a subscription applies a copy
        conn.execute(
            "INSERT INTO ledger_entry (id, wallet_id, seq, reference, kind, amount_minor, balance_after_minor,"
            " created_at) VALUES (%s, %s, 99, 'copied', 'deposit', 7, 7, now())",
            [entry_id, wallet.id],
        )
    assert dispatch_shard("shard_00") == 2
    bodies = {str(d.event_id): json.loads(d.body) for d in WebhookDelivery.objects.filter(endpoint__client=owner)}
    assert bodies[str(uuid.UUID(int=wallet.id.int + 2))]["data"]["object"]["reference"] == "copied"
    assert sorted(b["type"] for b in bodies.values()) == ["deposit.succeeded", "deposit.succeeded", "wallet.created"]


def _conninfo(alias: str) -> str:
    db = settings.DATABASES[alias]
    return f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']}"


def test_an_endpoint_failing_long_enough_is_disabled_and_can_be_enabled_again(settings, receiver) -> None:
    settings.WEBHOOK_DISABLE_AFTER_SECONDS = 3600
    settings.WEBHOOK_DISABLE_MIN_FAILURES = 3
    owner, key = make_client()
    api = api_for(key)
    endpoint_id, delivery = one_delivery(api, owner, receiver.url)
    failure = outbound.Outcome(503, "HTTP 503", "", 5)
    start = timezone.now()
    for hours in (0, 1, 2):  # three failures, the last two hours after the first
        delivery.refresh_from_db()
        record(delivery, failure, start + timedelta(hours=hours))
    shown = api.get(f"/v1/webhook_endpoints/{endpoint_id}").json()
    assert (shown["status"], shown["consecutive_failures"]) == ("disabled", 3)
    assert "3 failed deliveries in a row" in shown["disabled_reason"]
    enabled = api.patch(f"/v1/webhook_endpoints/{endpoint_id}", {"status": "enabled"}, format="json").json()
    assert (enabled["status"], enabled["consecutive_failures"], enabled["failing_since"]) == ("enabled", 0, None)


def test_a_delivery_past_the_retry_window_fails_for_good(settings, receiver) -> None:
    settings.WEBHOOK_RETRY_FOR_SECONDS = 60
    owner, key = make_client()
    _, delivery = one_delivery(api_for(key), owner, receiver.url)
    failure = outbound.Outcome(None, "ConnectionRefused", "", 1)
    assert record(delivery, failure, delivery.created_at + timedelta(seconds=10)) is not None  # retried later
    delivery.refresh_from_db()
    assert record(delivery, failure, delivery.created_at + timedelta(seconds=61)) is None  # given up
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 2)


def test_operators_see_endpoints_and_each_delivery_with_its_attempts(receiver) -> None:
    owner, key = make_client()
    api = api_for(key)
    endpoint_id, delivery = one_delivery(api, owner, receiver.url)
    record(delivery, outbound.Outcome(503, "HTTP 503", "busy", 7), timezone.now())
    api.patch(f"/v1/webhook_endpoints/{endpoint_id}", {"status": "disabled"}, format="json")
    viewer = logged_in(make_staff("vic", "viewers"))
    listed = viewer.get("/admin/webhooks/webhookendpoint/")
    assert [str(e.pk) for e in listed.context["cl"].result_list] == [endpoint_id]
    page = viewer.get(f"/admin/webhooks/webhookendpoint/{endpoint_id}/change/").content.decode()
    assert "disabled by its client" in page
    assert delivery.endpoint.secret not in page  # the secret is never shown
    attempts = viewer.get(f"/admin/webhooks/webhookdelivery/{delivery.id}/change/").content.decode()
    assert "HTTP 503" in attempts
    assert viewer.post(f"/admin/webhooks/webhookendpoint/{endpoint_id}/delete/", {"post": "yes"}).status_code == 403


def test_an_endpoint_deleted_while_an_attempt_is_being_recorded_goes_with_it(receiver) -> None:
    owner, key = make_client()
    api = api_for(key)
    endpoint_id, delivery = one_delivery(api, owner, receiver.url)
    db = settings.DATABASES["default"]
    with psycopg.connect(f"host={db['HOST']} port={db['PORT']} dbname={db['NAME']} user={db['USER']}") as sender:
        # A sender recording an attempt, as `record` does: the endpoint's row first.
        sender.execute("SELECT id FROM webhooks_endpoint WHERE id = %s FOR UPDATE", [endpoint_id])
        deleting = threading.Thread(target=lambda: api_for(key).delete(f"/v1/webhook_endpoints/{endpoint_id}"))
        deleting.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        wait_until(lambda: raw_query("default", waiting)[0][0] > 0, what="the deletion to wait for the lock")
        sender.execute(
            "INSERT INTO webhooks_attempt (delivery_id, at, status_code, duration_ms, error, response_excerpt)"
            " VALUES (%s, now(), 200, 1, '', '')",
            [delivery.id],
        )
        sender.commit()
        deleting.join(timeout=30)
    assert not WebhookEndpoint.objects.filter(id=endpoint_id).exists()
    assert not WebhookDelivery.objects.filter(id=delivery.id).exists()
