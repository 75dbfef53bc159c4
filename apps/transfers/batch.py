"""Batch submission: up to 1,000 transfers in one request, each with its own key and result.

Each item gets exactly the answer the single endpoint would give it (same validation, same
first step, same idempotency rules: `creation.run_group`), and one bad item never sinks the
others. Items are grouped by the payer's shard and each group commits in one transaction:
one commit for many transfers is what makes batches fast. A key that appears several times
in one batch is handled as the same number of single requests sent in that order would be:
the first occurrences run first, then the next ones against what the first ones recorded.
"""

from __future__ import annotations

from collections import defaultdict

from apps.common.errors import IdempotencyKeyInvalid, IdempotencyKeyMissing
from apps.sharding.routing import alias_for_id, one_map
from apps.transfers.creation import ItemResult, Render, TransferRequest, run_group
from apps.transfers.validation import Invalid, InvalidTransfer, parse_transfer_body, valid_idempotency_key

MAX_BATCH = 1000
KEY_PARAM = "idempotency_key"


def parse_item(client_id: int, index: int, raw: object) -> TransferRequest | ItemResult:
    """Validate one item as the single endpoint validates its body and header."""
    if not isinstance(raw, dict):
        return ItemResult.rejected(
            index, InvalidTransfer(Invalid("parameter_invalid", "Each transfer must be a JSON object.", None))
        )
    if "idempotency_key" not in raw:
        return ItemResult.rejected(index, IdempotencyKeyMissing("This field is required.", param=KEY_PARAM))
    key = raw["idempotency_key"]
    if not valid_idempotency_key(key):
        return ItemResult.rejected(
            index, IdempotencyKeyInvalid("1 to 255 printable ASCII characters.", param=KEY_PARAM)
        )
    parsed = parse_transfer_body(client_id, raw, key)
    if isinstance(parsed, Invalid):
        return ItemResult.rejected(index, InvalidTransfer(parsed))
    return parsed


def transfer_create_batch(*, client_id: int, items: list[object], render: Render) -> list[ItemResult]:
    """Create many transfers; returns one result per item, in the order given."""
    with one_map():  # every group's shard and the wallets each locks: one reading of the map
        return _create_batch(client_id=client_id, items=items, render=render)


def _create_batch(*, client_id: int, items: list[object], render: Render) -> list[ItemResult]:
    results: dict[int, ItemResult] = {}
    rounds: list[dict[str, list[tuple[int, TransferRequest, bool]]]] = []
    seen: dict[tuple, int] = defaultdict(int)
    for index, raw in enumerate(items):
        parsed = parse_item(client_id, index, raw)
        if isinstance(parsed, ItemResult):
            results[index] = parsed
            continue
        scope = (parsed.payer_id, parsed.idempotency_key)
        occurrence = seen[scope]
        seen[scope] += 1
        if occurrence == len(rounds):
            rounds.append(defaultdict(list))
        rounds[occurrence][alias_for_id(parsed.payer_id)].append((index, parsed, False))
    for groups in rounds:  # round n holds the n-th occurrence of each key, so it sees what round n-1 recorded
        for alias, group in groups.items():
            for result in run_group(alias, client_id, group, render=render, key_param=KEY_PARAM):
                results[result.index] = result
    return [results[i] for i in range(len(items))]
