"""Whose transfers a wallet takes: the rule, once in Python and once in SQL.

A wallet set to `same_client` takes only transfers made by its own owner: a stranger cannot
push it towards its balance limit or learn from a refusal that it is frozen. A stranger's
transfer is refused as if the wallet did not exist (`payee_not_found`), before any other
check of the payee. A refund is always taken: it gives back what the wallet paid.

The in-memory first step (`first_step.payee_refusal`) uses `accepts_credit`; the saga's
one-statement credit (`saga._CREDIT_SQL`) embeds `ACCEPTS_CREDIT_SQL`; the credit's slow path
(`services.wallet_credit`) reads the wallet and asks `accepts_credit`.
"""

from __future__ import annotations

from apps.ledger.models import AcceptsFrom


def accepts_credit(accepts_from: str, owner_id: int, *, client_id: int, refund: bool) -> bool:
    """Whether a wallet with these settings takes a transfer made by `client_id`."""
    return refund or accepts_from == AcceptsFrom.ANY or owner_id == client_id


# The same rule over ledger_wallet's columns, with the statement's %(client)s and %(refund)s.
ACCEPTS_CREDIT_SQL = f"(%(refund)s OR accepts_from = '{AcceptsFrom.ANY.value}' OR owner_id = %(client)s)"
