"""Schemathesis hooks and checks for the fuzzer (test_fuzz.py runs `st run` with these loaded).

Steering: schema-valid cases (positive mode) are nudged towards requests that get past the
business rules, so that sequences reach deep states (funded wallets, transfers that move
money). Only values the schema allows are swapped in, so every case stays schema-valid.
Negative cases are left alone.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import schemathesis
from schemathesis import GenerationMode
from schemathesis.generation.meta import TestPhase

CURRENCIES = ["EUR", "JPY", "GBP"]


def _ids(variable: str) -> list[str]:
    return [wallet_id for wallet_id in os.environ.get(variable, "").split(",") if wallet_id]


# USD wallets the fuzzer's client owns, made before the run: funded payers and payees.
PAYERS = _ids("CONTRACT_PAYER_IDS")
PAYEES = _ids("CONTRACT_PAYEE_IDS")
# Wallet ids the run has seen created (links hand them on; a transfer from one can go through).
CREATED: set[str] = set()
# A transfer request may wait up to 30 s for its outcome; a short wait keeps the run short.
MAX_WAIT_SECONDS = 1.0

# 400s a schema-valid request can still get: rules the schema cannot express.
RULES_BEYOND_THE_SCHEMA = {
    ("unsupported_currency", "currency"),  # three capitals, but no ISO 4217 code
    ("same_wallet", "to"),
    ("parameter_invalid", "from"),  # a UUIDv7 whose bucket this deployment does not have
    ("parameter_invalid", "to"),
    ("invalid_request", "cursor"),  # a string, but not a cursor this API returned
}


def _positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if not _positive(case):
        return case
    operation_id = case.operation.definition.raw.get("operationId")
    body = case.body if isinstance(case.body, dict) else None
    if operation_id == "wallets_create" and body is not None and random.random() < 0.8:
        # Mostly USD: the payees are, so transfers from new wallets can go through.
        body["currency"] = "USD" if random.random() < 0.8 else random.choice(CURRENCIES)
    if operation_id == "transfers_create" and body is not None:
        # In sequences a wallet made earlier pays (handed on by a link, else a funded payer) a
        # payee that exists, so that the sequence goes on with the transfer.
        stateful = case.meta.phase.name == TestPhase.STATEFUL
        if PAYERS and (str(body.get("from")) not in CREATED if stateful else random.random() < 0.7):
            body["from"] = random.choice(PAYERS)
        if PAYEES and (stateful or random.random() < 0.7):
            body["to"] = random.choice(PAYEES)
            body["currency"] = "USD"
    if operation_id == "transfers_create":
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and wait > MAX_WAIT_SECONDS:
            case.query["wait"] = MAX_WAIT_SECONDS
    return case


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    if case.operation.definition.raw.get("operationId") == "wallets_create" and response.status_code == 201:
        CREATED.add(json.loads(response.content)["id"])


@schemathesis.check
def positive_data_is_not_malformed(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request the schema allows is never refused as malformed (400), except by the rules the
    schema cannot express. Business refusals (404, 409, 422) are fine: they depend on state."""
    if not _positive(case) or response.status_code != 400:
        return None
    error = json.loads(response.content)["error"]
    if (error["code"], error["param"]) in RULES_BEYOND_THE_SCHEMA:
        return None
    raise AssertionError(f"The schema allows this request, but the API answered 400 {error['code']} ({error['param']})")


@schemathesis.check
def batch_rejects_invalid_items(ctx: Any, response: Any, case: Any) -> bool | None:
    """A batch answers 200 even when items are invalid (each gets its own answer): an item
    the schema does not allow must come back rejected. (Stands in for negative_data_rejection,
    which expects the whole request refused.)"""
    batch = case.operation.definition.raw.get("operationId") == "transfers_batch_create"
    if not batch or response.request.method != "POST" or response.status_code != 200:
        return None
    if case.meta is None or case.meta.generation.mode != GenerationMode.NEGATIVE:
        return None
    outcomes = [result["outcome"] for result in json.loads(response.content)["results"]]
    if "rejected" not in outcomes:
        raise AssertionError(f"A schema-violating batch was answered 200 with no item rejected: {outcomes}")
    return None
