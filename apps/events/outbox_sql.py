"""The outbox's SQL: the triggers that write an event with each change, and the dispatch cursor.

Triggers rather than calls from the services: every path that changes a transfer's status
(the first step, the saga's SQL, an operator's redrive, a capture), credits a wallet or
freezes it goes through them, so there is one implementation and no path can forget it.
Each object is rendered as the API renders it (tests compare the two). A move's copy
(logical replication) fires none of them: the events travel with their bucket instead.

Each trigger function inserts its event itself (one INSERT, no nested function call: the
measured cost of a call per event was worth avoiding on the hot path). An event is never
updated: the dispatcher follows a cursor over `txid`, the writing transaction's id (below).
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


def _insert(source: str, client: str, kind: str, object_id: str, seq: str, body: str) -> str:
    """The event's INSERT, inlined in each trigger. The id is a UUIDv7 (apps.sharding.ids): the
    clock's milliseconds, the source row's own version-and-bucket bytes, random bits with the
    RFC 9562 variant. `txid` is the writing transaction's id, what the dispatcher's cursor follows."""
    return f"""
    at := clock_timestamp();
    INSERT INTO events_event (id, client_id, type, object_id, seq, data, created_at, txid)
    VALUES (
        encode(substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3 FOR 6)
               || substring(uuid_send({source}) FROM 7 FOR 2)
               || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8), 'hex')::uuid,
        {client}, {kind}, {object_id}, {seq}, ({body})::text, at, pg_current_xact_id()::text::bigint);"""  # noqa: S608 - our own constant SQL


# The next number in the object's sequence (its changes are serialized by its row lock).
_SEQ = (
    "CASE TG_OP WHEN 'INSERT' THEN 1"
    " ELSE (SELECT COALESCE(max(seq), 0) + 1 FROM events_event WHERE object_id = NEW.id) END"
)

TRANSFER = f"""
CREATE FUNCTION events_on_transfer() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN{
    _insert(
        "NEW.id",
        "NEW.client_id",
        "CASE NEW.status WHEN 'pending' THEN 'transfer.created' ELSE 'transfer.' || NEW.status END",
        "NEW.id",
        _SEQ,
        "json_build_object("
        "'id', NEW.id, 'amount_minor', NEW.amount_minor, 'currency', NEW.currency, 'status', NEW.status,"
        " 'failure_reason', NEW.failure_reason, 'created_at', events_iso(NEW.created_at),"
        " 'updated_at', events_iso(NEW.updated_at), 'from', NEW.payer_id, 'to', NEW.payee_id,"
        " 'refund_of', NEW.refund_of, 'amount_refunded', NEW.amount_refunded)",
    )
}
    RETURN NULL;
END $$;

CREATE TRIGGER events_on_create AFTER INSERT ON transfers_transfer
    FOR EACH ROW EXECUTE FUNCTION events_on_transfer();
CREATE TRIGGER events_on_status AFTER UPDATE OF status ON transfers_transfer
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION events_on_transfer();
"""

# Money into or out of a wallet from outside a transfer, and a transfer's credit: the event
# goes to the wallet's owner, who sees the entry (what a credit says), not the payer's transfer.
ENTRY = f"""
CREATE FUNCTION events_on_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN{
    _insert(
        "NEW.id",
        "(SELECT owner_id FROM ledger_wallet WHERE id = NEW.wallet_id)",
        "CASE NEW.kind WHEN 'credit' THEN 'transfer.received' WHEN 'deposit' THEN 'deposit.succeeded'"
        " ELSE 'withdrawal.succeeded' END",
        "NEW.id",
        "1",
        "json_build_object("
        "'id', NEW.id, 'wallet_id', NEW.wallet_id, 'seq', NEW.seq, 'kind', NEW.kind, 'reference', NEW.reference,"
        " 'amount_minor', NEW.amount_minor, 'balance_after_minor', NEW.balance_after_minor,"
        " 'created_at', events_iso(NEW.created_at))",
    )
}
    RETURN NULL;
END $$;

CREATE TRIGGER events_on_entry AFTER INSERT ON ledger_entry
    FOR EACH ROW WHEN (NEW.kind IN ('credit', 'deposit', 'withdrawal')) EXECUTE FUNCTION events_on_entry();
"""  # noqa: S608 - our own constant SQL

WALLET = f"""
CREATE FUNCTION events_on_wallet() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN{
    _insert(
        "NEW.id",
        "NEW.owner_id",
        "CASE WHEN TG_OP = 'INSERT' THEN 'wallet.created' WHEN NEW.status = 'frozen' THEN 'wallet.frozen'"
        " ELSE 'wallet.unfrozen' END",
        "NEW.id",
        _SEQ,
        "json_build_object("
        "'id', NEW.id, 'currency', NEW.currency, 'status', NEW.status, 'balance_minor', NEW.balance_minor,"
        " 'payer_may_refund', NEW.payer_may_refund, 'created_at', events_iso(NEW.created_at),"
        " 'updated_at', events_iso(NEW.updated_at))",
    )
}
    RETURN NULL;
END $$;

CREATE TRIGGER events_on_create AFTER INSERT ON ledger_wallet
    FOR EACH ROW EXECUTE FUNCTION events_on_wallet();
CREATE TRIGGER events_on_status AFTER UPDATE OF status ON ledger_wallet
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION events_on_wallet();
"""

HOLD = f"""
CREATE FUNCTION events_on_hold() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
BEGIN{
    _insert(
        "NEW.id",
        "NEW.client_id",
        "CASE NEW.status WHEN 'held' THEN 'hold.created' ELSE 'hold.' || NEW.status END",
        "NEW.id",
        _SEQ,
        "json_build_object("
        "'id', NEW.id, 'from', NEW.payer_id, 'to', NEW.payee_id, 'amount_minor', NEW.amount_minor,"
        " 'currency', NEW.currency, 'status', NEW.status, 'failure_reason', NEW.failure_reason,"
        " 'captured_minor', NEW.captured_minor, 'transfer_id', NEW.transfer_id,"
        " 'expires_at', events_iso(NEW.expires_at), 'resolved_at', events_iso(NEW.resolved_at),"
        " 'created_at', events_iso(NEW.created_at))",
    )
}
    RETURN NULL;
END $$;

CREATE TRIGGER events_on_create AFTER INSERT ON holds_hold
    FOR EACH ROW EXECUTE FUNCTION events_on_hold();
CREATE TRIGGER events_on_status AFTER UPDATE OF status ON holds_hold
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION events_on_hold();
"""

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
DROP FUNCTION events_on_hold(); DROP FUNCTION events_on_wallet(); DROP FUNCTION events_on_entry();
DROP FUNCTION events_on_transfer(); DROP FUNCTION events_iso(timestamptz);
"""

INSTALL = "\n".join([ISO, TRANSFER, ENTRY, WALLET, HOLD, CURSOR])
