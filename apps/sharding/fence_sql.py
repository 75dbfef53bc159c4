"""The fence trigger of one sharded table (used by the migrations that install it)."""

from __future__ import annotations

from apps.sharding.placement import BUCKET_COLUMNS


def guard_sql(table: str) -> str:
    column = BUCKET_COLUMNS[table]
    return f"""
CREATE FUNCTION sharding_guard_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM sharding_guard_bucket(sharding_bucket(OLD.{column}));
        RETURN OLD;
    END IF;
    PERFORM sharding_guard_bucket(sharding_bucket(NEW.{column}));
    RETURN NEW;
END
$$;
CREATE TRIGGER sharding_guard BEFORE INSERT OR UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION sharding_guard_{table}();
"""


def drop_guard_sql(table: str) -> str:
    return f"DROP TRIGGER sharding_guard ON {table}; DROP FUNCTION sharding_guard_{table}();"
