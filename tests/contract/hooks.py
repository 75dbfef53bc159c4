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
import urllib.parse
from typing import Any

import schemathesis
from hypothesis import strategies as st
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
MOVEMENTS = {"wallets_deposits_create", "wallets_withdrawals_create"}
KEY_HEADER = "Idempotency-Key"
# The payers hold 10^12 minor units each; withdrawals of at most this leave them funded.
SMALL_AMOUNT = 10**6
_COVERAGE_RANDOM = random.Random(0)
# gunicorn's limit_request_line, less room for the method, the protocol and percent-encoding.
MAX_REQUEST_LINE = 3000
# A transfer request may wait up to 30 s for its outcome; a short wait keeps the run short.
MAX_WAIT_SECONDS = 1.0

# 400s a schema-valid request can still get: rules the schema cannot express.
RULES_BEYOND_THE_SCHEMA = {
    ("unsupported_currency", "currency"),  # three capitals, but no ISO 4217 code
    ("same_wallet", "to"),
    ("parameter_invalid", "from"),  # a UUIDv7 whose bucket this deployment does not have
    ("parameter_invalid", "to"),
    ("invalid_request", "cursor"),  # a string, but not a cursor this API returned
    ("parameter_invalid", "expires_at"),  # a date-time Python cannot hold (a leap second, year 0)
    ("url_not_allowed", "url"),  # a string, but not an http(s) URL this deployment may call
    # Text with NUL or a lone surrogate (PostgreSQL stores neither): the schema's pattern forbids
    # them, but the fuzzer's regex support does not always honour the pattern's escapes.
    ("parameter_invalid", "description"),
    ("parameter_invalid", "reason"),
    ("parameter_invalid", "url"),
    # Metadata keys of 1-40 characters (`propertyNames`, which OpenAPI 3.0 does not have), and a
    # wallet's merged metadata over 50 keys.
    ("parameter_invalid", "metadata"),
}


def _known() -> set[str]:
    return {*PAYERS, *PAYEES, *CREATED}


def _positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    # gunicorn refuses a request line over 4094 bytes itself (414, in HTML) before the API
    # sees the request: the fuzzer's piles of made-up query parameters would test gunicorn.
    query = urllib.parse.urlencode(case.query or {}, doseq=True)
    return len(urllib.parse.quote(case.formatted_path)) + len(query) < MAX_REQUEST_LINE


@schemathesis.hook
def flatmap_case(context: Any, case: Any) -> Any:
    # Choices come from Hypothesis (`st.randoms`), so that `--seed` replays them: Hypothesis
    # reseeds the `random` module before each example, which would make every choice the same.
    return st.randoms(use_true_random=False).map(lambda rnd: _steer(case, rnd))


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    # The coverage phase draws nothing from Hypothesis (and runs no flatmap hook): its cases
    # are enumerated in a fixed order, so a fixed seed steers them the same way on every run.
    if case.meta is not None and case.meta.phase.name == TestPhase.COVERAGE:
        return _steer(case, _COVERAGE_RANDOM)
    return case


def _steer(case: Any, rnd: random.Random) -> Any:
    if not _positive(case):
        return case
    operation_id = case.operation.definition.raw.get("operationId")
    body = case.body if isinstance(case.body, dict) else None
    stateful = case.meta.phase.name == TestPhase.STATEFUL
    key = (case.headers or {}).get(KEY_HEADER)
    if isinstance(key, str) and key and rnd.random() < 0.5:
        # Hypothesis draws the same few short keys again and again: half the requests get a
        # fresh one (a repeat with another body is a fine 422, but it stops there).
        case.headers[KEY_HEADER] = f"{key[:200]}.{rnd.getrandbits(64):x}"
    if operation_id == "wallets_create" and body is not None and (stateful or rnd.random() < 0.8):
        # Mostly USD, as the payees are, so that transfers from new wallets go through; in
        # sequences always (a link hands the wallet on to a transfer).
        body["currency"] = "USD" if stateful or rnd.random() < 0.8 else rnd.choice(CURRENCIES)
    if operation_id in MOVEMENTS and body is not None:
        # A sequence that starts with a movement starts on a wallet that exists (links hand on
        # known ones), so that it goes on; elsewhere half the movements try unknown ids, and
        # half the withdrawals are small enough for the funded payers.
        unknown = case.path_parameters.get("wallet_id") not in _known()
        if unknown and PAYERS and (stateful or rnd.random() < 0.5):
            case.path_parameters["wallet_id"] = rnd.choice(PAYERS)
        amount = body.get("amount_minor")
        if operation_id == "wallets_withdrawals_create" and isinstance(amount, int) and rnd.random() < 0.5:
            body["amount_minor"] = amount % SMALL_AMOUNT + 1
    if operation_id == "transfers_create" and body is not None:
        # In sequences a wallet made earlier pays (a link hands it on after this hook, else a
        # funded payer does) a payee that exists, so that the sequence goes on with the transfer.
        _steer_transfer(body, rnd, always=stateful)
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and wait > MAX_WAIT_SECONDS:
            case.query["wait"] = MAX_WAIT_SECONDS
    if operation_id == "transfers_batch_create" and body is not None:
        for item in body.get("transfers", []):
            if isinstance(item, dict):
                _steer_transfer(item, rnd, always=False)
    return case


def _steer_transfer(body: dict[str, Any], rnd: random.Random, *, always: bool) -> None:
    """Mostly (or `always`) a funded payer pays a payee, in USD: a transfer that goes through."""
    if PAYERS and (always or rnd.random() < 0.7):
        body["from"] = rnd.choice(PAYERS)
        body["currency"] = "USD"
    if PAYEES and (always or rnd.random() < 0.7):
        body["to"] = rnd.choice(PAYEES)
        body["currency"] = "USD"


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
