#!/bin/sh
# docker/entrypoint.sh ROLE [ARG...]: start one of shardwallet's roles. The image's entry point,
# and supervisord's (deploy/supervisor/shardwallet.conf), so every deployment runs the same
# manage.py commands as `make run` and the tests. Run from the directory holding manage.py.
set -eu

usage() {
    cat >&2 <<'EOF'
usage: entrypoint.sh ROLE [ARG...]
  api       the HTTP API under gunicorn         (manage.py run_api)
  worker    a Celery saga worker                (manage.py run_worker)
  webhooks  the webhook worker (queue webhooks) (manage.py run_worker --queues webhooks)
  beat      Celery beat, the sweeper's clock    (manage.py run_beat; exactly one)
  cdc       the audit stream into ClickHouse    (manage.py run_cdc; one per shard set)
  migrate   migrate the control database and every shard, then exit
            (manage.py migrate_shards; non-zero if any shard fails)
  shell     a Django shell                      (manage.py shell)
  manage    any other manage.py command, e.g. `manage reconcile`
ARGs are passed to the command.
EOF
}

# gunicorn's and Celery's processes write their metrics files here (it must exist).
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi

if [ "$#" -eq 0 ]; then
    usage
    exit 64
fi
role=$1
shift

# exec: the role's process replaces this shell, so the container's (or supervisord's) signals
# reach it directly and its exit status is the container's.
case "$role" in
    api) exec python manage.py run_api "$@" ;;
    worker) exec python manage.py run_worker "$@" ;;
    webhooks) exec python manage.py run_worker --queues webhooks "$@" ;;
    beat) exec python manage.py run_beat "$@" ;;
    cdc) exec python manage.py run_cdc "$@" ;;
    migrate) exec python manage.py migrate_shards "$@" ;;
    shell) exec python manage.py shell "$@" ;;
    manage) exec python manage.py "$@" ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        echo "entrypoint.sh: unknown role '$role'" >&2
        usage
        exit 64
        ;;
esac
