"""The fence trigger of one sharded table (used by the migrations that install it)."""

from __future__ import annotations

from apps.sharding.placement import BUCKET_COLUMNS, FENCE_LOCK_CLASS, FENCE_SQLSTATE, MOVER_SETTING

# The bucket the transaction last checked: its shared lock, once taken, is held to commit, so
# later rows of that bucket need no second check (a transfer writes five or six in a row).
CHECKED_SETTING = "shardwallet.checked_bucket"


def guard_sql(table: str, *, mover_role: str | None = None) -> str:
    """One plpgsql function per table (a second function call per row would double the cost).

    Measured on an insert of ~7 us: +5 us per row checked, +0.6 us per row of a bucket the
    transaction already checked. With `mover_role`, the bypass setting counts only in a
    session whose user is a member of that role (anyone may SET a custom setting); the role
    is looked at only when the setting is on, so the service's own writes pay nothing for it.
    """
    column = BUCKET_COLUMNS[table]
    bypass = f"current_setting('{MOVER_SETTING}', true) IS NOT DISTINCT FROM 'on'"
    if mover_role is not None:
        bypass = f"({bypass} AND pg_has_role(session_user, '{mover_role}', 'MEMBER'))"
    create = "CREATE OR REPLACE FUNCTION" if mover_role is not None else "CREATE FUNCTION"
    trigger = (
        ""
        if mover_role is not None
        else f"""
CREATE TRIGGER sharding_guard BEFORE INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION sharding_guard_{table}();"""
    )
    return f"""
{create} sharding_guard_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    id uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.{column} ELSE NEW.{column} END;
    b integer := ((get_byte(uuid_send(id), 6) & 15) << 8) | get_byte(uuid_send(id), 7);
BEGIN
    IF current_setting('{CHECKED_SETTING}', true) IS DISTINCT FROM b::text AND NOT COALESCE({bypass}, false) THEN
        PERFORM pg_advisory_xact_lock_shared({FENCE_LOCK_CLASS}, b);
        PERFORM 1 FROM sharding_bucket_owner WHERE bucket = b AND state = 'owned';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'bucket % is not served by this shard', b
                USING ERRCODE = '{FENCE_SQLSTATE}', HINT = 'reload the shard map and retry on the owner';
        END IF;
        PERFORM set_config('{CHECKED_SETTING}', b::text, true);
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;{trigger}
"""


def drop_guard_sql(table: str) -> str:
    return f"DROP TRIGGER sharding_guard ON {table}; DROP FUNCTION sharding_guard_{table}();"


def truncate_guard_sql(table: str) -> str:
    """Refuse TRUNCATE of a sharded table while a move involves this shard.

    A TRUNCATE ignores row filters: replicated, it would empty the target's other ranges,
    and under a fence it would wipe the copy the switch compares against.
    """
    return f"""
CREATE TRIGGER sharding_truncate_guard BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION sharding_refuse_truncate_while_moving();
"""


def drop_truncate_guard_sql(table: str) -> str:
    return f"DROP TRIGGER sharding_truncate_guard ON {table};"


REFUSE_TRUNCATE_FUNCTION = """
CREATE FUNCTION sharding_refuse_truncate_while_moving() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sharding_bucket_owner WHERE state = 'fenced')
       OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname LIKE 'shardwallet\\_move\\_%')
       OR EXISTS (SELECT 1 FROM pg_subscription WHERE subname LIKE 'shardwallet\\_move\\_%') THEN
        RAISE EXCEPTION 'TRUNCATE of % refused: a bucket move involves this shard', TG_TABLE_NAME
            USING ERRCODE = 'SWF02', HINT = 'finish or abort the move (move_buckets --status) first';
    END IF;
    RETURN NULL;
END
$$;
"""


# The database role whose members may write rows of buckets their shard does not serve (the
# mover's copy, clean-up and abort). Grant it to the mover's login role in production.
MOVER_ROLE = "shardwallet_mover"

CREATE_MOVER_ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{MOVER_ROLE}') THEN
        CREATE ROLE {MOVER_ROLE} NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    -- A migration role without CREATEROLE: the DBA creates it (docs/DEPLOY.md); until then
    -- the mover's writes fail loudly, the service's are unaffected.
    RAISE NOTICE 'role {MOVER_ROLE} not created: %', SQLERRM;
END
$$;
"""  # noqa: S608 (a constant role name)
