"""A broker that stops answering without closing its connections (its host down or cut off, as
in a Sentinel failover) cannot hang a publish: the service's own broker options bound every
socket, the sentinels' included, and a silent sentinel is asked once per try, not four times.
The "broker" here is a real listening socket that takes every connection and never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from celery import Celery
from django.conf import settings

from apps.common.redis_client import SentinelLayout, broker_settings

BOUND_SECONDS = 60  # far beyond the options' few seconds; without them the publish never returns
TRIES = 1 + settings.CELERY_TASK_PUBLISH_RETRY_POLICY["max_retries"]


@dataclass
class Silent:
    """Accepts connections, counts them, keeps them open, never says a word."""

    listener: socket.socket
    accepted: list[socket.socket] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            self.accepted.append(conn)


@pytest.fixture
def silent() -> Iterator[Silent]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    server = Silent(listener)
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        yield server
    finally:
        listener.close()
        for conn in server.accepted:
            conn.close()


def _publish_returns(broker: str, options: dict[str, object]) -> list[BaseException]:
    """Publish one task as the API does; the errors it ended with. Fails if it never returns."""
    app = Celery("silent-broker", broker=broker, broker_transport_options=options, set_as_current=False)
    errors: list[BaseException] = []
    done = threading.Event()

    def publish() -> None:
        try:
            policy = settings.CELERY_TASK_PUBLISH_RETRY_POLICY
            app.send_task("apps.transfers.tasks.advance_transfer", args=["x"], retry_policy=policy)
        except Exception as exc:  # what enqueue_advance logs and leaves to the sweeper
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=publish, daemon=True).start()
    assert done.wait(BOUND_SECONDS), "a publish to a broker that never answers did not return"
    return errors


def test_a_silent_broker_cannot_hang_a_publish(silent: Silent) -> None:
    broker, options = broker_settings(
        f"redis://:pw@127.0.0.1:{silent.port}/0", None, settings.CELERY_BROKER_TRANSPORT_OPTIONS
    )
    assert _publish_returns(broker, options), "a publish to a broker that never answered succeeded"
    assert silent.accepted


def test_a_silent_sentinel_cannot_hang_a_publish_and_is_asked_once_per_try(silent: Silent) -> None:
    own = ("master_name", "sentinel_kwargs")  # the test stack's own, if it runs with sentinels
    options = {k: v for k, v in settings.CELERY_BROKER_TRANSPORT_OPTIONS.items() if k not in own}
    layout = SentinelLayout((("127.0.0.1", silent.port),), "shardwallet", "sentinel-secret")
    broker, options = broker_settings("redis://:pw@ignored:6379/0", layout, options)
    assert _publish_returns(broker, options), "a publish found a master through a sentinel that never answered"
    # With more sentinels, the next one is asked instead: one silent host costs one timeout per try.
    assert 1 <= len(silent.accepted) <= TRIES
