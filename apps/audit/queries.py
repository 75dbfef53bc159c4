"""Named audit queries: the questions auditors ask most, as ClickHouse SQL.

Each runs on either backend (`manage.py audit_query NAME --param k=v`) and reads only the
deduplicated state (FINAL or the views). Parameters are ClickHouse query parameters
(`{name:Type}`), never pasted into the SQL text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Transfers that have ended, for transfer_pairing_sql.
TERMINAL_TRANSFERS = """
SELECT transfer_id, status, amount_minor, currency, payer_id, payee_id
FROM audit.transfers FINAL
WHERE is_deleted = 0 AND status IN ('completed', 'failed')
"""


def transfer_pairing_sql(transfers: str, entries_filter: str = "1") -> str:
    """Each transfer of `transfers` (a query giving transfer_id, status, amount_minor, currency,
    payer_id, payee_id) beside its entries (the store's now; `entries_filter` narrows them),
    with `paired` = 1 when they are what its status needs:
    - completed: exactly one debit (-amount on the payer) and one credit (+amount on the
      payee), no refund;
    - failed: no entries at all, or exactly one debit and one refund (+amount on the payer).
    An entry's `reference` is its transfer's id (audit.transfer_entries holds them keyed by
    it); a debit is negative, a credit and a refund positive (the shards' CHECK ties the
    sign to the kind)."""
    return f"""
SELECT
    t.transfer_id AS transfer_id,
    t.status AS status,
    t.amount_minor AS amount_minor,
    t.currency AS currency,
    t.payer_id AS payer_id,
    t.payee_id AS payee_id,
    e.debits AS debits,
    e.credits AS credits,
    e.refunds AS refunds,
    e.debit_wallet = t.payer_id AND e.debit_minor = -toInt128(t.amount_minor) AS debit_matches,
    e.credit_wallet = t.payee_id AND e.credit_minor = toInt128(t.amount_minor) AS credit_matches,
    e.refund_wallet = t.payer_id AND e.refund_minor = toInt128(t.amount_minor) AS refund_matches,
    if(t.status = 'completed',
       e.debits = 1 AND e.credits = 1 AND e.refunds = 0 AND debit_matches AND credit_matches,
       e.credits = 0 AND ((e.debits = 0 AND e.refunds = 0)
                          OR (e.debits = 1 AND e.refunds = 1 AND debit_matches AND refund_matches))) AS paired
FROM ({transfers}) AS t
LEFT JOIN
(
    SELECT
        transfer_id,
        countIf(kind = 'debit') AS debits,
        countIf(kind = 'credit') AS credits,
        countIf(kind = 'refund') AS refunds,
        anyIf(wallet_id, kind = 'debit') AS debit_wallet,
        anyIf(wallet_id, kind = 'credit') AS credit_wallet,
        anyIf(wallet_id, kind = 'refund') AS refund_wallet,
        sumIf(toInt128(amount_minor), kind = 'debit') AS debit_minor,
        sumIf(toInt128(amount_minor), kind = 'credit') AS credit_minor,
        sumIf(toInt128(amount_minor), kind = 'refund') AS refund_minor
    FROM audit.transfer_entries FINAL
    WHERE is_deleted = 0 AND ({entries_filter})
    GROUP BY transfer_id
) AS e ON e.transfer_id = t.transfer_id
"""  # noqa: S608


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
            "Per currency, two checks that can fail. Money: the wallets' balances = deposits - withdrawals "
            "(from the entries) - money in flight (from the transfers: debited or refunding, and not credited "
            "to the payee) - money held (open holds: their hold entries not yet matched by a release). "
            "Pairing: every completed transfer has one debit of its amount on its payer and one "
            "credit of it on its payee, every failed one no entries or a debit and its refund. `holds` is 1 "
            "where both do; run it when the stream has caught up (the shards are followed one by one, so "
            "under traffic the store can hold a debit before the matching credit).",
            f"""
SELECT
    b.currency AS currency,
    b.wallets AS wallets,
    b.balances_minor AS balances_minor,
    coalesce(m.deposits_minor, toInt128(0)) AS deposits_minor,
    coalesce(m.withdrawals_minor, toInt128(0)) AS withdrawals_minor,
    coalesce(f.in_flight_minor, toInt128(0)) AS in_flight_minor,
    coalesce(m.held_minor, toInt128(0)) AS held_minor,
    deposits_minor - withdrawals_minor - in_flight_minor - held_minor AS expected_balances_minor,
    balances_minor = expected_balances_minor AS conserved,
    coalesce(p.completed, toUInt64(0)) AS completed_transfers,
    coalesce(p.completed_unpaired, toUInt64(0)) AS completed_unpaired,
    coalesce(p.failed, toUInt64(0)) AS failed_transfers,
    coalesce(p.failed_unpaired, toUInt64(0)) AS failed_unpaired,
    completed_unpaired = 0 AND failed_unpaired = 0 AS paired,
    conserved AND paired AS holds
FROM
(
    SELECT currency, count() AS wallets, sum(toInt128(balance_minor)) AS balances_minor
    FROM audit.wallets FINAL WHERE is_deleted = 0 GROUP BY currency
) AS b
LEFT JOIN
(
    SELECT w.currency AS currency, sum(e.deposits) AS deposits_minor, sum(e.withdrawals) AS withdrawals_minor,
           sum(e.held) AS held_minor
    FROM
    (
        -- A hold entry is negative, its release positive: what they leave is still held.
        SELECT wallet_id, sumIf(toInt128(amount_minor), kind = 'deposit') AS deposits,
               -sumIf(toInt128(amount_minor), kind = 'withdrawal') AS withdrawals,
               -sumIf(toInt128(amount_minor), kind IN ('hold', 'release')) AS held
        FROM audit.ledger_entries FINAL
        WHERE is_deleted = 0 AND kind IN ('deposit', 'withdrawal', 'hold', 'release')
        GROUP BY wallet_id
    ) AS e
    INNER JOIN (SELECT wallet_id, currency FROM audit.wallets FINAL WHERE is_deleted = 0) AS w
        ON w.wallet_id = e.wallet_id
    GROUP BY w.currency
) AS m ON m.currency = b.currency
LEFT JOIN
(
    SELECT tr.currency AS currency, sum(toInt128(tr.amount_minor)) AS in_flight_minor
    FROM (SELECT * FROM audit.transfers FINAL WHERE is_deleted = 0 AND status IN ('debited', 'refunding')) AS tr
    LEFT ANTI JOIN
        (SELECT transfer_id FROM audit.payee_credits FINAL WHERE is_deleted = 0 AND outcome = 'credited') AS pc
        ON pc.transfer_id = tr.transfer_id
    GROUP BY tr.currency
) AS f ON f.currency = b.currency
LEFT JOIN
(
    SELECT
        currency,
        countIf(status = 'completed') AS completed,
        countIf(status = 'completed' AND NOT paired) AS completed_unpaired,
        countIf(status = 'failed') AS failed,
        countIf(status = 'failed' AND NOT paired) AS failed_unpaired
    FROM ({transfer_pairing_sql(TERMINAL_TRANSFERS)})
    GROUP BY currency
) AS p ON p.currency = b.currency
ORDER BY currency
""",  # noqa: S608
        ),
        AuditQuery(
            "transfer_pairing",
            "Terminal transfers whose entries do not pair: a completed one needs exactly one debit of its amount "
            "on its payer and one credit of it on its payee, a failed one no entries, or a debit and its refund "
            "of the same amount on the payer. Transfers in flight are skipped; at most `limit` rows.",
            f"""
SELECT *
FROM ({transfer_pairing_sql(TERMINAL_TRANSFERS)})
WHERE NOT paired
ORDER BY transfer_id
LIMIT {{limit:UInt32}}
""",  # noqa: S608
            {"limit": "at most this many transfers (default 100)"},
            {"limit": "100"},
        ),
        AuditQuery(
            "open_holds",
            "Holds not yet captured, voided or expired, oldest first, with their age: from the wallets' entries "
            "(a hold entry not matched by a release). `older_than_seconds` (default 0) keeps the older ones.",
            """
SELECT
    toUUIDOrZero(reference) AS hold_id,
    any(wallet_id) AS wallet_id,
    -sumIf(toInt128(amount_minor), kind = 'hold') AS amount_minor,
    minIf(created_at, kind = 'hold') AS held_since,
    dateDiff('second', held_since, now64(6)) AS age_seconds
FROM audit.ledger_entries FINAL
WHERE is_deleted = 0 AND kind IN ('hold', 'release')
GROUP BY reference
HAVING countIf(kind = 'release') = 0 AND age_seconds >= {older_than_seconds:UInt32}
ORDER BY held_since
""",
            {"older_than_seconds": "only holds at least this old (default 0)"},
            {"older_than_seconds": "0"},
        ),
        AuditQuery(
            "expired_holds",
            "Holds released by their expiry (nobody captured or voided them), newest first, from the shards' "
            "change log: the reserved amount, when the hold was due and how long after that it was released. "
            "`days` (default 7) looks back that far.",
            """
SELECT
    toUUID(JSONExtractString(new_row, 'id')) AS hold_id,
    any(JSONExtractString(new_row, 'payer_id')) AS payer_id,
    any(JSONExtractString(new_row, 'payee_id')) AS payee_id,
    any(JSONExtractInt(new_row, 'amount_minor')) AS amount_minor,
    any(JSONExtractString(new_row, 'currency')) AS currency,
    any(parseDateTime64BestEffort(JSONExtractString(new_row, 'expires_at'), 6, 'UTC')) AS expires_at,
    any(parseDateTime64BestEffort(JSONExtractString(new_row, 'resolved_at'), 6, 'UTC')) AS released_at,
    dateDiff('millisecond', expires_at, released_at) AS ms_after_due
FROM audit.changes FINAL
WHERE table_name = 'holds_hold' AND op IN ('insert', 'update', 'snapshot')
  AND JSONExtractString(new_row, 'status') = 'expired'
GROUP BY hold_id
HAVING released_at >= now64(6) - toIntervalDay({days:UInt32})
ORDER BY released_at DESC
""",
            {"days": "how many days back (default 7)"},
            {"days": "7"},
        ),
        AuditQuery(
            "refunds",
            "Refunded transfers with their refunds: each refund's transfer, amount and status, and per original the "
            "total its completed refunds paid back against the amount paid and the original's own `amount_refunded` "
            "(`over` = 1 would mean refunds beyond the amount). `transfer` (default: all) keeps one original.",
            """
SELECT
    o.transfer_id AS original_id,
    o.amount_minor AS original_amount,
    o.currency AS currency,
    o.amount_refunded AS amount_refunded,
    groupArray((r.transfer_id, r.amount_minor, r.status, r.failure_reason, r.created_at)) AS refunds,
    sumIf(toInt128(r.amount_minor), r.status = 'completed') AS refunded_completed,
    sumIf(toInt128(r.amount_minor), r.status IN ('pending', 'debited', 'refunding')) AS refunding_now,
    refunded_completed > o.amount_minor AS over
FROM (SELECT * FROM audit.transfers FINAL WHERE is_deleted = 0 AND refund_of IS NOT NULL) AS r
INNER JOIN (SELECT * FROM audit.transfers FINAL WHERE is_deleted = 0) AS o ON o.transfer_id = r.refund_of
WHERE {transfer:String} = '' OR toString(o.transfer_id) = {transfer:String}
GROUP BY o.transfer_id, o.amount_minor, o.currency, o.amount_refunded
ORDER BY min(r.created_at)
""",
            {"transfer": "an original transfer's id (default: every refunded transfer)"},
            {"transfer": ""},
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
        AuditQuery(
            "lost_transactions",
            "The transactions a shard lost when it was restored to an earlier point (or failed over to a standby "
            "that was behind), as `cdc_resnapshot` set them aside: per transaction its position, time and what it "
            "changed, oldest first; `shard_replay` applies them again (`--skip LSN` leaves one out). `shard` "
            "(default: all) and `generation` (default -1: every one) narrow it.",
            """
SELECT
    shard,
    generation,
    branch_lsn,
    commit_lsn,
    any(xid) AS xid,
    any(commit_time) AS commit_time,
    arrayStringConcat(arraySort(groupUniqArray(concat(table_name, ' ', toString(op)))), ', ') AS changes,
    count() AS rows
FROM audit.abandoned_changes FINAL
WHERE ({shard:String} = '' OR shard = {shard:String})
  AND ({generation:Int64} < 0 OR generation = {generation:Int64})
GROUP BY shard, generation, branch_lsn, commit_lsn
ORDER BY shard, generation, commit_lsn
""",
            {"shard": "only this shard (default: all)", "generation": "only this generation (default -1: all)"},
            {"shard": "", "generation": "-1"},
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
