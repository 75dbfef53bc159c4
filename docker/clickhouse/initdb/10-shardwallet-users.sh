#!/bin/sh
# Run by the clickhouse-server image on its first start (an empty data volume), as the
# administrator of CLICKHOUSE_USER / CLICKHOUSE_PASSWORD_FILE. Creates shardwallet's two users
# from the DSNs the application is given, so each password is written in one place:
#   - the CDC's writer (SHARDWALLET_WRITER_URL_FILE, the cdc service's CLICKHOUSE_URL): read,
#     insert, create and add columns in the `audit` database, and nothing else;
#   - the auditors' read-only user (SHARDWALLET_AUDITOR_URL_FILE): SELECT on `audit`, under
#     limits it cannot raise (docs/ARCHITECTURE.md, "Auditor access").
# A subshell: the image sources a script that is not executable, and this must not change its
# shell options.
(
    set -eu

    user_of() { sed -E 's#^[a-z]+://([^:@/]*).*#\1#' "$1"; }
    password_of() { sed -E 's#^[a-z]+://[^:@/]*:([^@]*)@.*#\1#' "$1"; }
    sha256_of() { printf '%s' "$1" | sha256sum | cut -d ' ' -f 1; }
    # Names go into SQL unquoted and passwords are hashed here, so refuse anything unexpected.
    check() {
        printf '%s' "$2" | grep -Eq "$3" || { echo "$0: $1 in $4 must match $3" >&2; exit 1; }
    }

    writer=$(user_of "$SHARDWALLET_WRITER_URL_FILE")
    writer_password=$(password_of "$SHARDWALLET_WRITER_URL_FILE")
    auditor=$(user_of "$SHARDWALLET_AUDITOR_URL_FILE")
    auditor_password=$(password_of "$SHARDWALLET_AUDITOR_URL_FILE")
    check user "$writer" '^[a-z_][a-z0-9_]*$' "$SHARDWALLET_WRITER_URL_FILE"
    check user "$auditor" '^[a-z_][a-z0-9_]*$' "$SHARDWALLET_AUDITOR_URL_FILE"
    # URL-safe characters only: a password is not percent-decoded here.
    check password "$writer_password" '^[A-Za-z0-9_.~-]{16,}$' "$SHARDWALLET_WRITER_URL_FILE"
    check password "$auditor_password" '^[A-Za-z0-9_.~-]{16,}$' "$SHARDWALLET_AUDITOR_URL_FILE"
    if [ "$writer" = "$auditor" ]; then
        echo "$0: the writer and the auditor must be different users (both are '$writer')" >&2
        exit 1
    fi

    admin_password=${CLICKHOUSE_PASSWORD:-}
    if [ -z "$admin_password" ] && [ -n "${CLICKHOUSE_PASSWORD_FILE:-}" ]; then
        admin_password=$(cat "$CLICKHOUSE_PASSWORD_FILE")
    fi

    clickhouse-client --host 127.0.0.1 --user "${CLICKHOUSE_USER:-default}" --password "$admin_password" \
        --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS audit;

CREATE USER IF NOT EXISTS ${writer} IDENTIFIED WITH sha256_hash BY '$(sha256_of "$writer_password")';
-- What the CDC does, nothing more: its migrations create tables and views and add columns;
-- the stream inserts (a deletion is an inserted row). No DROP, no ALTER DELETE, no TRUNCATE.
GRANT SELECT, INSERT, CREATE DATABASE, CREATE TABLE, CREATE VIEW, ALTER ADD COLUMN ON audit.* TO ${writer};

CREATE SETTINGS PROFILE IF NOT EXISTS shardwallet_auditor SETTINGS
    readonly = 1,
    max_execution_time = 60, timeout_overflow_mode = 'throw',
    max_memory_usage = 2147483648,
    max_result_rows = 10000000, result_overflow_mode = 'throw',
    max_threads = 2,
    max_concurrent_queries_for_user = 2;
CREATE USER IF NOT EXISTS ${auditor} IDENTIFIED WITH sha256_hash BY '$(sha256_of "$auditor_password")'
    SETTINGS PROFILE 'shardwallet_auditor';
GRANT SELECT ON audit.* TO ${auditor};
SQL
    echo "$0: created ClickHouse users ${writer} (writer) and ${auditor} (read-only auditor)"
)
