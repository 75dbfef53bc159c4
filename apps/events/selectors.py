"""Reads of the outbox: a client's events, newest first, from every shard merged by id."""

from __future__ import annotations

import heapq
import uuid

from apps.events.errors import EventNotFound
from apps.events.models import Event
from apps.events.rendering import with_objects
from apps.sharding.fence import read_by_id
from apps.sharding.routing import shard_aliases

_SERVED = "sharding_serves(events_event.id)"  # not a copy arriving or left behind by a move


def event_list(
    *, client_id: int, before_id: uuid.UUID | None, limit: int, types: list[str], object_id: uuid.UUID | None
) -> list[Event]:
    per_shard = []
    for alias in shard_aliases():
        events = Event.objects.using(alias).filter(client_id=client_id).extra(where=[_SERVED])  # noqa: S610 (constant SQL)
        if before_id is not None:
            events = events.filter(id__lt=before_id)
        if types:
            events = events.filter(type__in=types)
        if object_id is not None:
            events = events.filter(object_id=object_id)
        per_shard.append(with_objects(alias, list(events.order_by("-id")[:limit])))
    merged = heapq.merge(*per_shard, key=lambda e: e.id, reverse=True)
    return [event for _, event in zip(range(limit), merged, strict=False)]


def event_get(*, client_id: int, event_id: uuid.UUID) -> Event:
    def read(alias: str) -> Event | None:
        events = Event.objects.using(alias).filter(id=event_id, client_id=client_id)
        found = events.extra(where=[_SERVED]).first()  # noqa: S610 (constant SQL)
        return next(iter(with_objects(alias, [found])), None) if found is not None else None

    event = read_by_id(event_id, read)
    if event is None:
        raise EventNotFound(param="event_id")
    return event
