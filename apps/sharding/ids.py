"""Ids that carry their bucket, so a row's shard is computed, never looked up.

Every sharded id is a UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then the
12-bit `rand_a` field, which holds the logical bucket, then 62 random bits.
Ids stay time-ordered (good B-tree locality, newest-first pagination) and unique
without coordination, and `bucket_of(id)` is a shift and a mask.
"""

from __future__ import annotations

import secrets
import time
import uuid

_BUCKET_BITS = 12
_BUCKET_MASK = (1 << _BUCKET_BITS) - 1


class InvalidId(ValueError):
    """Not a shardwallet id."""


def new_id(bucket: int) -> uuid.UUID:
    if not 0 <= bucket <= _BUCKET_MASK:
        raise ValueError(f"bucket {bucket} does not fit in {_BUCKET_BITS} bits")
    millis = time.time_ns() // 1_000_000
    value = (
        (millis & ((1 << 48) - 1)) << 80
        | 0x7 << 76  # version 7
        | bucket << 64
        | 0b10 << 62  # RFC 9562 variant
        | secrets.randbits(62)
    )
    return uuid.UUID(int=value)


def bucket_of(value: uuid.UUID) -> int:
    return (value.int >> 64) & _BUCKET_MASK


def parse_id(raw: object) -> uuid.UUID:
    """Parse an id from user input; raises InvalidId for anything we never issued."""
    if isinstance(raw, uuid.UUID):
        parsed = raw
    else:
        try:
            parsed = uuid.UUID(str(raw))
        except ValueError:
            raise InvalidId(f"{raw!r} is not a valid id") from None
    if parsed.version != 7 or parsed.variant != uuid.RFC_4122:
        raise InvalidId(f"{raw!r} is not a valid id")
    return parsed
