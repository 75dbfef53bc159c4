"""Named audit queries: the questions auditors ask most, as ClickHouse SQL.

Each runs on either backend (`manage.py audit_query NAME --param k=v`) and reads only the
deduplicated state (FINAL or the views). Parameters are ClickHouse query parameters
(`{name:Type}`), never pasted into the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AuditQuery:
    name: str
    description: str
    sql: str
    params: dict[str, str] = field(default_factory=dict)  # name -> help
    defaults: dict[str, str] = field(default_factory=dict)


QUERIES: dict[str, AuditQuery] = {
    q.name: q
    for q in (
        AuditQuery(
            "wallet_history",
            "Every entry of one wallet in order, with the running balance recomputed from the amounts; "
            "`consistent` is 0 where it disagrees with the balance the shard recorded after the entry.",
            """
SELECT
    entry_seq,
    created_at,
    kind,
    reference,
    amount_minor,
    balance_after_minor,
    sum(toInt128(amount_minor)) OVER (ORDER BY entry_seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        AS running_balance_minor,
    running_balance_minor = balance_after_minor AS consistent
FROM audit.ledger_entries FINAL
WHERE wallet_id = {wallet:UUID} AND is_deleted = 0
ORDER BY entry_seq
""",
            {"wallet": "the wallet id"},
        ),
        AuditQuery(
            "transfer_timeline",
            "The status transitions of one transfer, in order, with the time spent in the previous status.",
            """
SELECT
    e.event_id AS event_id,
    e.created_at AS at,
    e.from_status AS from_status,
    e.to_status AS to_status,
    e.reason AS reason,
    if(row_number() OVER w = 1, NULL, dateDiff('millisecond', lagInFrame(e.created_at) OVER w, e.created_at))
        AS ms_in_previous_status,
    t.amount_minor AS amount_minor,
    t.currency AS currency,
    t.payer_id AS payer_id,
    t.payee_id AS payee_id
FROM (SELECT * FROM audit.transfer_transitions FINAL WHERE transfer_id = {transfer:UUID} AND is_deleted = 0) AS e
LEFT JOIN (SELECT * FROM audit.transfers FINAL WHERE transfer_id = {transfer:UUID}) AS t
    ON t.transfer_id = e.transfer_id
WINDOW w AS (ORDER BY e.event_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
ORDER BY event_id
""",
            {"transfer": "the transfer id"},
        ),
        AuditQuery(
            "stuck_transfers",
            "Transfers still in flight (pending, debited, refunding) whose last change is older than "
            "`older_than_seconds`; parked ones wait for an operator.",
            """
SELECT
    transfer_id,
    shard,
    status,
    amount_minor,
    currency,
    payer_id,
    payee_id,
    attempts,
    parked_at,
    updated_at,
    dateDiff('second', updated_at, now64(6)) AS seconds_since_update
FROM audit.transfers FINAL
WHERE is_deleted = 0
  AND status IN ('pending', 'debited', 'refunding')
  AND updated_at < now64(6) - toIntervalSecond({older_than_seconds:UInt32})
ORDER BY updated_at
""",
            {"older_than_seconds": "minimum age of the last status change (default 60)"},
            {"older_than_seconds": "60"},
        ),
        AuditQuery(
            "daily_volume",
            "Per day and currency over the last `days` days: money deposited, withdrawn and moved by "
            "completed transfer credits, with counts.",
            """
SELECT
    toDate(e.created_at) AS day,
    w.currency AS currency,
    countIf(e.kind = 'deposit') AS deposits,
    sumIf(toInt128(e.amount_minor), e.kind = 'deposit') AS deposited_minor,
    countIf(e.kind = 'withdrawal') AS withdrawals,
    -sumIf(toInt128(e.amount_minor), e.kind = 'withdrawal') AS withdrawn_minor,
    countIf(e.kind = 'credit') AS transfers_credited,
    sumIf(toInt128(e.amount_minor), e.kind = 'credit') AS transferred_minor,
    countIf(e.kind = 'refund') AS refunds,
    sumIf(toInt128(e.amount_minor), e.kind = 'refund') AS refunded_minor
FROM (SELECT * FROM audit.ledger_entries FINAL WHERE is_deleted = 0) AS e
INNER JOIN (SELECT wallet_id, currency FROM audit.wallets FINAL) AS w ON w.wallet_id = e.wallet_id
WHERE e.created_at >= today() - toIntervalDay({days:UInt32})
GROUP BY day, currency
ORDER BY day, currency
""",
            {"days": "how many days back (default 30)"},
            {"days": "30"},
        ),
        AuditQuery(
            "conservation",
            "Per currency: balances = deposits - withdrawals - money in flight, with money in flight "
            "computed twice: from the entries (debits not credited or refunded) and from the transfers "
            "(debited or refunding, not credited). Every row must show conserved = 1 and agrees = 1.",
            """
SELECT
    c.currency AS currency,
    c.wallets AS wallets,
    c.balances_minor AS balances_minor,
    c.deposits_minor AS deposits_minor,
    c.withdrawals_minor AS withdrawals_minor,
    c.in_flight_minor AS in_flight_minor,
    c.expected_balances_minor AS expected_balances_minor,
    c.conserved AS conserved,
    coalesce(t.in_flight_minor, toInt128(0)) AS in_flight_by_transfers_minor,
    in_flight_by_transfers_minor = c.in_flight_minor AS agrees
FROM audit.currency_totals AS c
LEFT JOIN
(
    SELECT tr.currency AS currency, sum(toInt128(tr.amount_minor)) AS in_flight_minor
    FROM (SELECT * FROM audit.transfers FINAL WHERE is_deleted = 0 AND status IN ('debited', 'refunding')) AS tr
    LEFT ANTI JOIN
        (SELECT transfer_id FROM audit.payee_credits FINAL WHERE is_deleted = 0 AND outcome = 'credited') AS pc
        ON pc.transfer_id = tr.transfer_id
    GROUP BY tr.currency
) AS t ON t.currency = c.currency
ORDER BY currency
""",
        ),
        AuditQuery(
            "bucket_moves",
            "Bucket ranges moved between shards, one row per move, from the shards' move journals: when the "
            "source stopped taking writes (fenced_at), when the target started serving the range (owned_at) or "
            "the move gave up (unfenced_at); `bucket` (default: all) keeps the moves of one bucket, in order.",
            """
SELECT
    move_id,
    any(first_bucket) AS first_bucket,
    any(last_bucket) AS last_bucket,
    any(source) AS source,
    any(target) AS target,
    max(epoch) AS epoch,
    minIfOrNull(commit_time, kind = 'fence') AS fenced_at,
    minIfOrNull(commit_time, kind = 'own') AS owned_at,
    minIfOrNull(commit_time, kind = 'unfence') AS unfenced_at,
    multiIf(owned_at IS NOT NULL, 'moved', unfenced_at IS NOT NULL, 'aborted', 'fenced') AS state
FROM audit.move_journal FINAL
WHERE is_deleted = 0
GROUP BY move_id
HAVING {bucket:Int32} < 0 OR {bucket:Int32} BETWEEN first_bucket AND last_bucket
ORDER BY move_id
""",
            {"bucket": "only the moves of this bucket (default -1: every move)"},
            {"bucket": "-1"},
        ),
    )
}


def bind(query: AuditQuery, given: dict[str, str]) -> dict[str, str]:
    """The query's parameters: defaults, then what was given; complain about anything else."""
    unknown = set(given) - set(query.params)
    if unknown:
        raise ValueError(f"{query.name} takes no parameter {', '.join(sorted(unknown))}")
    values = {**query.defaults, **given}
    missing = [p for p in query.params if p not in values]
    if missing:
        raise ValueError(f"{query.name} needs --param {missing[0]}=... ({query.params[missing[0]]})")
    return values
