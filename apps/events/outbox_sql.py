"""The outbox's SQL: the triggers that write an event with each change, and the dispatch cursor.

Triggers rather than calls from the services: every path that changes a transfer's status
(the first step, the saga's SQL, an operator's redrive, a capture), credits a wallet or
freezes it goes through them, so there is one implementation and no path can forget it.
Each object is rendered as the API renders it (tests compare the two). A move's copy
(logical replication) fires none of them: the events travel with their bucket instead.

New rows are handed to one statement-level trigger per statement (the statement's rows as a
transition table, one INSERT ... SELECT): a batch's events cost a set-based insert, not a
trigger call each (measured: ~45 us per event row by row against ~25 set-based). A status
that changed fires a row-level trigger, only for those rows. An event is never updated: the
dispatcher follows a cursor over `txid`, the writing transaction's id (below).
"""

from __future__ import annotations

# ISO 8601 in UTC as the API writes it (Python's isoformat with "Z": no fraction when the
# microseconds are zero). STABLE so that the planner inlines it into the callers' cached plans.
ISO = """
CREATE FUNCTION events_iso(ts timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN ts IS NULL THEN NULL
                WHEN date_trunc('second', ts) = ts
                THEN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                ELSE to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END
$$;
"""


def _event_id(source: str, at: str) -> str:
    """A UUIDv7 (apps.sharding.ids): the clock's milliseconds, the source row's own
    version-and-bucket bytes, random bits with the RFC 9562 variant."""
    return (
        f"encode(substring(int8send(floor(extract(epoch FROM {at}) * 1000)::bigint) FROM 3 FOR 6)"
        f" || substring(uuid_send({source}) FROM 7 FOR 2)"
        f" || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8), 'hex')::uuid"
    )


_COLUMNS = "INSERT INTO events_event (id, client_id, type, object_id, seq, data, created_at, txid)"
_TXID = "pg_current_xact_id()::text::bigint"  # the writing transaction: what the dispatcher's cursor follows


def _transfer_json(r: str) -> str:
    return (
        f"json_build_object('id', {r}.id, 'amount_minor', {r}.amount_minor, 'currency', {r}.currency,"
        f" 'status', {r}.status, 'failure_reason', {r}.failure_reason, 'created_at', events_iso({r}.created_at),"
        f" 'updated_at', events_iso({r}.updated_at), 'from', {r}.payer_id, 'to', {r}.payee_id,"
        f" 'refund_of', {r}.refund_of, 'amount_refunded', {r}.amount_refunded, 'description', {r}.description,"
        f" 'metadata', COALESCE({r}.metadata, '{{}}'::jsonb))"
    )


def _wallet_json(r: str) -> str:
    return (
        f"json_build_object('id', {r}.id, 'currency', {r}.currency, 'status', {r}.status,"
        f" 'balance_minor', {r}.balance_minor, 'payer_may_refund', {r}.payer_may_refund,"
        f" 'accepts_from', {r}.accepts_from,"
        f" 'created_at', events_iso({r}.created_at), 'updated_at', events_iso({r}.updated_at),"
        f" 'description', {r}.description, 'metadata', COALESCE({r}.metadata, '{{}}'::jsonb))"
    )


def _hold_json(r: str) -> str:
    return (
        f"json_build_object('id', {r}.id, 'from', {r}.payer_id, 'to', {r}.payee_id, 'amount_minor', {r}.amount_minor,"
        f" 'currency', {r}.currency, 'status', {r}.status, 'failure_reason', {r}.failure_reason,"
        f" 'captured_minor', {r}.captured_minor, 'transfer_id', {r}.transfer_id,"
        f" 'expires_at', events_iso({r}.expires_at), 'resolved_at', events_iso({r}.resolved_at),"
        f" 'created_at', events_iso({r}.created_at))"
    )


def _insert_function(name: str, client: str, kind: str, body: str, joins: str = "", where: str = "") -> str:
    """New rows: one INSERT ... SELECT over the statement's rows (a first step inserts a batch's
    transfers and entries in one statement each: its events too). OR REPLACE: a later
    migration redefines a function when the object's rendering gains a field."""
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_COLUMNS}
    SELECT {_event_id("n.id", "n.at")}, {client}, {kind}, n.id, 1, ({body})::text, n.at, {_TXID}
      FROM (SELECT i.*, clock_timestamp() AS at FROM inserted i {where}) n {joins};
    RETURN NULL;
END $$;
"""  # noqa: S608 - our own constant SQL


def _insert_trigger(table: str, name: str, trigger: str = "events_on_create") -> str:
    """One statement-level trigger per statement, its new rows as a transition table."""
    return f"""
CREATE TRIGGER {trigger} AFTER INSERT ON {table} REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION {name}();
"""


def _status_function(name: str, client: str, kind: str, body: str) -> str:
    """A status that changed. The next number in the object's sequence is read under its row
    lock, which serializes its changes."""
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz := clock_timestamp();
BEGIN
    {_COLUMNS}
    VALUES ({_event_id("NEW.id", "at")}, {client}, {kind}, NEW.id,
            (SELECT COALESCE(max(seq), 0) + 1 FROM events_event WHERE object_id = NEW.id), ({body})::text, at,
            {_TXID});
    RETURN NULL;
END $$;
"""  # noqa: S608 - our own constant SQL


def _status_trigger(table: str, name: str) -> str:
    """A row-level trigger: only rows whose status changed fire it."""
    return f"""
CREATE TRIGGER events_on_status AFTER UPDATE OF status ON {table}
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION {name}();
"""


def _transfer_kind(r: str) -> str:
    return f"CASE {r}.status WHEN 'pending' THEN 'transfer.created' ELSE 'transfer.' || {r}.status END"


def _hold_kind(r: str) -> str:
    return f"CASE {r}.status WHEN 'held' THEN 'hold.created' ELSE 'hold.' || {r}.status END"


TRANSFER_FUNCTIONS = _insert_function(
    "events_on_transfers_created", "n.client_id", _transfer_kind("n"), _transfer_json("n")
) + _status_function("events_on_transfer_status", "NEW.client_id", _transfer_kind("NEW"), _transfer_json("NEW"))
TRANSFER = (
    TRANSFER_FUNCTIONS
    + _insert_trigger("transfers_transfer", "events_on_transfers_created")
    + _status_trigger("transfers_transfer", "events_on_transfer_status")
)

# Money into or out of a wallet from outside a transfer, and a transfer's credit: the event
# goes to the wallet's owner, who sees the entry (what a credit says), not the payer's transfer.
# An entry never changes and lives beside its event (same bucket), so its event stores no
# object: readers render the entry itself (apps.events.rendering.with_objects). Half of a
# transfer's events then cost no JSON and a third of the bytes.
ENTRY_FUNCTIONS = _insert_function(
    "events_on_entries_created",
    "w.owner_id",
    "CASE n.kind WHEN 'credit' THEN 'transfer.received' WHEN 'deposit' THEN 'deposit.succeeded'"
    " ELSE 'withdrawal.succeeded' END",
    "NULL",
    joins="JOIN ledger_wallet w ON w.id = n.wallet_id",
    where="WHERE i.kind IN ('credit', 'deposit', 'withdrawal')",
)
ENTRY = ENTRY_FUNCTIONS + _insert_trigger("ledger_entry", "events_on_entries_created", trigger="events_on_entry")

WALLET_FUNCTIONS = _insert_function(
    "events_on_wallets_created", "n.owner_id", "'wallet.created'", _wallet_json("n")
) + _status_function("events_on_wallet_status", "NEW.owner_id",
                     "CASE NEW.status WHEN 'frozen' THEN 'wallet.frozen' ELSE 'wallet.unfrozen' END",
                     _wallet_json("NEW"))  # fmt: skip
WALLET = (
    WALLET_FUNCTIONS
    + _insert_trigger("ledger_wallet", "events_on_wallets_created")
    + _status_trigger("ledger_wallet", "events_on_wallet_status")
)

HOLD = (
    _insert_function("events_on_holds_created", "n.client_id", _hold_kind("n"), _hold_json("n"))
    + _status_function("events_on_hold_status", "NEW.client_id", _hold_kind("NEW"), _hold_json("NEW"))
    + _insert_trigger("holds_hold", "events_on_holds_created")
    + _status_trigger("holds_hold", "events_on_hold_status")
)


# The dispatcher's cursor on each shard: the last (txid, id) handed to the webhooks. A row
# with txid below the oldest transaction still running (pg_snapshot_xmin) can no longer
# appear behind the cursor, so the dispatcher reads only up to that horizon and never needs
# to mark an event (an UPDATE per event would double the outbox's writes and its WAL).
# Copies arriving with a move (apply workers run as `replica`) take the copying transaction's
# id instead of the source's, which means nothing here: they are dispatched again on this
# shard, and a delivery is unique per endpoint and event, so nothing is sent twice.
CURSOR = """
CREATE TABLE events_dispatch_cursor (
    id smallint PRIMARY KEY CHECK (id = 1),
    txid bigint NOT NULL,
    event_id uuid NOT NULL
);
INSERT INTO events_dispatch_cursor VALUES (1, 0, '00000000-0000-0000-0000-000000000000');

CREATE FUNCTION events_copied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END $$;
CREATE TRIGGER events_copied BEFORE INSERT ON events_event FOR EACH ROW EXECUTE FUNCTION events_copied();
ALTER TABLE events_event ENABLE REPLICA TRIGGER events_copied;
"""

DROP = """
DROP TRIGGER events_copied ON events_event; DROP FUNCTION events_copied(); DROP TABLE events_dispatch_cursor;
DROP TRIGGER events_on_create ON holds_hold; DROP TRIGGER events_on_status ON holds_hold;
DROP TRIGGER events_on_create ON ledger_wallet; DROP TRIGGER events_on_status ON ledger_wallet;
DROP TRIGGER events_on_entry ON ledger_entry;
DROP TRIGGER events_on_create ON transfers_transfer; DROP TRIGGER events_on_status ON transfers_transfer;
DROP FUNCTION events_on_holds_created(); DROP FUNCTION events_on_hold_status();
DROP FUNCTION events_on_wallets_created(); DROP FUNCTION events_on_wallet_status();
DROP FUNCTION events_on_entries_created(); DROP FUNCTION events_on_transfers_created();
DROP FUNCTION events_on_transfer_status(); DROP FUNCTION events_iso(timestamptz);
"""

INSTALL = "\n".join([ISO, TRANSFER, ENTRY, WALLET, HOLD, CURSOR])
