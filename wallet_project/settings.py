"""Settings for shardwallet. DATABASES is built from the shard map (shards.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

from apps.audit.auditors import load_accounts, parse_login
from apps.common.redis_client import SentinelLayout, broker_settings, parse_sentinels
from apps.sharding.shardmap import SSL_MODES, TLS_DEFAULTS, load_shard_map
from wallet_project.environment import Environment, bind_port

BASE_DIR = Path(__file__).resolve().parent.parent


ENV = Environment()


def _env_path(value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else BASE_DIR / path


# docs/DEPLOY.md has the table of every variable. Those read with ENV.get are required in
# production (SHARDWALLET_ENV unset or `production`); their defaults serve `make run` and tests.
SECRET_KEY = ENV.get("SHARDWALLET_SECRET_KEY", "dev-only-insecure-secret-key-change-me-in-production")
# Rotation: the new key in SHARDWALLET_SECRET_KEY, the old ones here (comma- or line-separated)
# until the sessions and signed values they made have expired (docs/DEPLOY.md, "Rotating secrets").
SECRET_KEY_FALLBACKS = [k for k in ENV.optional("SHARDWALLET_SECRET_KEY_FALLBACKS", "").replace(",", "\n").split() if k]
if ENV.production:
    for _name, _key in [("SHARDWALLET_SECRET_KEY", SECRET_KEY)] + [
        ("SHARDWALLET_SECRET_KEY_FALLBACKS", k) for k in SECRET_KEY_FALLBACKS
    ]:
        # Django's own bar (check --deploy's W009): long, varied, not a placeholder.
        if _key and (len(_key) < 50 or len(set(_key)) < 5 or _key.startswith(("django-insecure", "dev-only"))):
            ENV.refuse(
                f"{_name} is refused: a secret key needs 50+ characters, 5+ of them different"
                " (e.g. `openssl rand -hex 32`)"
            )
DEBUG = ENV.flag("SHARDWALLET_DEBUG", False)
if DEBUG and ENV.production:
    ENV.refuse("SHARDWALLET_DEBUG=1 is refused in production: it shows settings and SQL in error pages")
for _fault_variable in ("SHARDWALLET_CRASH_AT", "SHARDWALLET_STOP_AT", "SHARDWALLET_HOLD_AT"):
    if ENV.production and ENV.value(_fault_variable):
        ENV.refuse(f"{_fault_variable} (the fault tests' crash points) is refused in production")
# `Server-Timing: app;dur=<ms>` on every response: the application's own time, for benchmarks
# and browsers' developer tools; off in production unless asked for (it tells clients how long
# the server worked).
SERVER_TIMING_HEADER = ENV.flag("SHARDWALLET_SERVER_TIMING", not ENV.production)
ALLOWED_HOSTS = ENV.get("SHARDWALLET_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
# The admin behind a TLS-terminating proxy: its public origin, e.g. https://wallet.example.com.
CSRF_TRUSTED_ORIGINS = [o for o in ENV.optional("SHARDWALLET_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
# Session and CSRF cookies only over HTTPS; on by default in production.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = ENV.flag("SHARDWALLET_SECURE_COOKIES", ENV.production)
# An operator's admin session lasts a working day at most, and ends with the browser.
SESSION_COOKIE_AGE = int(ENV.optional("SHARDWALLET_SESSION_SECONDS", str(8 * 3600)))
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
if ENV.flag("SHARDWALLET_BEHIND_TLS_PROXY", False):
    # The proxy terminates TLS and says so in X-Forwarded-Proto: plain HTTP is redirected, and
    # browsers are told to use HTTPS only (HSTS). The probes and the scrape stay plain: they come
    # from inside the network, not through the proxy.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^health(/live|/ready)?$", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(ENV.optional("SHARDWALLET_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = ENV.flag("SHARDWALLET_HSTS_INCLUDE_SUBDOMAINS", True)
    # Preloading commits the whole domain to HTTPS in browsers for months: the domain owner's
    # decision, not a default (check --deploy's W021 says so; silenced while it is off).
    SECURE_HSTS_PRELOAD = ENV.flag("SHARDWALLET_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

# The shard map (which servers, which buckets), Redis, and this host's state directory
# (metrics files, the CDC's status and embedded store, beat's schedule; `make run`'s servers).
SHARDS_FILE = _env_path(ENV.get("SHARDWALLET_SHARDS_FILE", "shards.yaml"))
DEVSTACK_DIR = _env_path(ENV.optional("SHARDWALLET_DEVSTACK_DIR", "var/dev"))
REDIS_URL = ENV.get("SHARDWALLET_REDIS_URL", "redis://127.0.0.1:6379/0")
if ENV.production and REDIS_URL and not urlparse(REDIS_URL).password:
    # Anyone who can write to the broker can queue tasks: production's Redis asks for a password.
    ENV.refuse(
        "SHARDWALLET_REDIS_URL has no password: production needs one, redis://:PASSWORD@host:6379/0 or an ACL"
        " user redis://USER:PASSWORD@host:6379/0 (rediss:// for TLS); SHARDWALLET_REDIS_URL_FILE keeps it in a file"
    )
# Redis Sentinel: the sentinels (host:port,...) name the master, by SHARDWALLET_REDIS_SENTINEL_MASTER;
# SHARDWALLET_REDIS_URL then gives only the master's password and database.
REDIS_SENTINEL: SentinelLayout | None = None
try:
    if _sentinels := parse_sentinels(ENV.optional("SHARDWALLET_REDIS_SENTINELS", "")):
        REDIS_SENTINEL = SentinelLayout(
            _sentinels,
            ENV.optional("SHARDWALLET_REDIS_SENTINEL_MASTER", "shardwallet"),
            ENV.optional("SHARDWALLET_REDIS_SENTINEL_PASSWORD", ""),
        )
except ValueError as _exc:
    ENV.refuse(f"SHARDWALLET_REDIS_SENTINELS: {_exc}")
ENV.check()

if TLS_DEFAULTS["sslmode"] and TLS_DEFAULTS["sslmode"] not in SSL_MODES:
    ENV.refuse(f"SHARDWALLET_DB_SSLMODE must be one of {', '.join(sorted(SSL_MODES))}")
SHARD_MAP = load_shard_map(SHARDS_FILE)
DATABASES = {"default": SHARD_MAP.control.django_settings()}
DATABASES.update({alias: server.django_settings() for alias, server in SHARD_MAP.shards.items()})
for _database in DATABASES.values():
    # Django's PostgreSQL backend, counting connection and query errors per alias for /metrics.
    _database["ENGINE"] = "apps.observability.backend"
DATABASE_ROUTERS = ["apps.sharding.router.ShardRouter"]
SHARDED_APPS = {"ledger", "transfers", "holds", "refunds", "events"}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "apps.common",
    "apps.sharding",
    "apps.accounts",
    "apps.ledger",
    "apps.transfers",
    "apps.holds",
    "apps.refunds",
    "apps.events",
    "apps.webhooks",
    "apps.audit",
    "apps.observability",
    "apps.operators",  # last: its post_migrate hook sets up the staff groups once every app's permissions exist
]

MIDDLEWARE = [
    "apps.common.surfaces.SurfaceMiddleware",
    "apps.observability.middleware.RequestMetricsMiddleware",
    "apps.common.limits.BodySizeLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "wallet_project.urls"
WSGI_APPLICATION = "wallet_project.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Operators' passwords (the admin): Django's validators, and django-axes locks a username, and
# separately an address, after AXES_FAILURE_LIMIT failed logins for AXES_COOLOFF_TIME. Clients
# of the API use keys, not passwords.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = int(ENV.optional("SHARDWALLET_ADMIN_LOCKOUT_FAILURES", "5"))
AXES_COOLOFF_TIME = float(ENV.optional("SHARDWALLET_ADMIN_LOCKOUT_HOURS", "0.25"))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DEVSTACK_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["apps.accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["apps.accounts.authentication.IsApiClient"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.accounts.throttling.ApiKeyRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["apps.common.api.JSONParser"],
    "EXCEPTION_HANDLER": "apps.common.errors.api_exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "apps.common.api.JSONOnlyNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "shardwallet API",
    "DESCRIPTION": "Wallets, deposits, withdrawals and ledger history on sharded PostgreSQL.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Swagger UI from the installed package, not a CDN: nothing foreign runs on our origin.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "apps.common.openapi.postprocess"],
    "ENUM_NAME_OVERRIDES": {
        "WalletStatusEnum": "apps.ledger.models.WalletStatus",
        "EntryKindEnum": "apps.ledger.models.EntryKind",
        "TransferStatusEnum": "apps.transfers.models.TransferStatus",
        "FailureReasonEnum": "apps.transfers.models.FailureReason",
        "BatchItemStatusEnum": "apps.transfers.api.serializers.BATCH_ITEM_STATUSES",
        "BatchItemErrorCodeEnum": "apps.transfers.api.serializers.BATCH_ITEM_ERROR_CODES",
        "WebhookEndpointStatusEnum": "apps.webhooks.models.EndpointStatus",
        "WebhookDeliveryStatusEnum": "apps.webhooks.models.DeliveryStatus",
    },
}

# JSON lines by default (every `extra` field, e.g. transfer_id, becomes a key); "text" for humans.
LOG_FORMAT = ENV.optional("SHARDWALLET_LOG_FORMAT", "json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "apps.observability.jsonlog.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": ENV.optional("SHARDWALLET_LOG_LEVEL", "INFO")},
    # django-axes says hello at every start; its lockouts are warnings.
    "loggers": {"axes": {"level": "WARNING"}},
}

# The processes of each role (apps/common/management/commands/run_*.py; the image's entry points).
API_BIND = ENV.optional("SHARDWALLET_API_BIND", "127.0.0.1:8000")
# The operators' surfaces (the admin, the operations page, /metrics) on an address of their own:
# the API's address answers 404 for them (apps.common.surfaces). Production keeps them on the
# host's loopback unless told otherwise; `off` serves them with the API (development's default).
OPS_BIND = ENV.optional("SHARDWALLET_OPS_BIND", "127.0.0.1:8001" if ENV.production else "off")
OPS_BIND = "" if OPS_BIND == "off" else OPS_BIND
if OPS_BIND and ENV.flag("SHARDWALLET_BEHIND_TLS_PROXY", False):
    # The admin then answers on the operators' listener only, which operators reach past the
    # public proxy (an SSH tunnel to localhost, a VPN): no redirect to an HTTPS it does not serve.
    SECURE_REDIRECT_EXEMPT.append(r"^admin/")
if OPS_BIND:
    try:
        if bind_port(OPS_BIND) == bind_port(API_BIND):
            ENV.refuse(f"SHARDWALLET_OPS_BIND ({OPS_BIND}) needs a port of its own, not SHARDWALLET_API_BIND's")
    except ImproperlyConfigured as exc:
        ENV.refuse(f"SHARDWALLET_OPS_BIND or SHARDWALLET_API_BIND: {exc}")
    # Operators reach the listener at its own address (an SSH tunnel to the host's loopback):
    # that name is one the service answers to, whatever SHARDWALLET_ALLOWED_HOSTS lists.
    OPS_HOST = OPS_BIND.rpartition(":")[0].strip("[]")
    for name in [OPS_HOST, *(["localhost"] if OPS_HOST in ("127.0.0.1", "::1") else [])]:
        if name and name not in ("0.0.0.0", "::") and name not in ALLOWED_HOSTS:  # noqa: S104 - compared, not bound
            ALLOWED_HOSTS.append(name)
# /metrics asks for `Authorization: Bearer <token>` when this is set (on any address).
METRICS_TOKEN = ENV.optional("SHARDWALLET_METRICS_TOKEN", "")
# The gauges read from the shards are computed at most this often per process, whatever the
# number of scrapes: a scrape costs a dictionary lookup, not a query per shard.
METRICS_SHARD_GAUGES_SECONDS = float(ENV.optional("SHARDWALLET_METRICS_SHARD_GAUGES_SECONDS", "10"))
# A request body larger than this is answered 413 before it is read (a batch of 1,000
# transfers with short metadata is well under it).
API_MAX_BODY_BYTES = int(ENV.optional("SHARDWALLET_API_MAX_BODY_BYTES", str(2 << 20)))
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
# Requests per second each API key may make (a token bucket in Redis, apps.accounts.throttling),
# and the burst it may spend at once; a client's own limits (ApiClient) override these. 0: no limit.
API_RATE_LIMIT_PER_SECOND = float(ENV.optional("SHARDWALLET_API_RATE_LIMIT_PER_SECOND", "1000"))
API_RATE_LIMIT_BURST = int(ENV.optional("SHARDWALLET_API_RATE_LIMIT_BURST", "2000"))
API_WORKERS = int(ENV.optional("SHARDWALLET_API_WORKERS", "2"))
# gthread: a request waiting for a transfer (?wait=) holds a thread, not a whole worker.
API_THREADS = int(ENV.optional("SHARDWALLET_API_THREADS", "8"))
WORKER_CONCURRENCY = int(ENV.optional("SHARDWALLET_WORKER_CONCURRENCY", "2"))

# Metrics: serve points its gunicorn and Celery processes here (PROMETHEUS_MULTIPROC_DIR), emptied at each start.
METRICS_DIR = DEVSTACK_DIR / "metrics"

# Transfers and the saga.
TRANSFER_MAX_WAIT_SECONDS = 30
# How long a write waits while its buckets switch shards before answering 503 shard_moving.
# POST /v1/transfers runs a cross-shard transfer's credit and completion in the request
# (answering 201 when they commit) instead of handing it to a drain; a step that cannot run
# then is left to the saga as before. Off by default while it is measured (docs/PERFORMANCE.md).
TRANSFER_CREDIT_INLINE = ENV.flag("SHARDWALLET_TRANSFER_CREDIT_INLINE", False)
# Drains of what a request left `debited` run in the API process, one thread per payer shard
# (apps/transfers/local_drain.py), instead of a Celery message per drain: p99 to terminal at
# half load 38-123 ms against 146-395 with drains in workers, at the same or better
# throughput (docs/PERFORMANCE.md).
# Celery workers still run the sweeper, retries, left-overs and a drain this one hands over.
TRANSFER_DRAIN_IN_API = ENV.flag("SHARDWALLET_TRANSFER_DRAIN_IN_API", True)
SHARD_MOVE_WAIT_SECONDS = float(ENV.optional("SHARDWALLET_SHARD_MOVE_WAIT_SECONDS", "5"))
# A fence older than this on the shard the map still names (nobody serves those buckets) is an
# alarm on /health, /metrics and the operations page.
SHARD_FENCE_ALARM_SECONDS = float(ENV.optional("SHARDWALLET_SHARD_FENCE_ALARM_SECONDS", "60"))
SAGA_MAX_RETRIES = int(ENV.optional("SHARDWALLET_SAGA_MAX_RETRIES", "12"))
SAGA_RETRY_BASE_SECONDS = float(ENV.optional("SHARDWALLET_SAGA_RETRY_BASE_SECONDS", "0.5"))
SAGA_RETRY_MAX_SECONDS = float(ENV.optional("SHARDWALLET_SAGA_RETRY_MAX_SECONDS", "30"))
# The sweeper re-drives in-flight transfers untouched for this long (longer than a retry's backoff).
SAGA_STALLED_AFTER_SECONDS = float(ENV.optional("SHARDWALLET_SAGA_STALLED_AFTER_SECONDS", "60"))
SAGA_SWEEP_INTERVAL_SECONDS = float(ENV.optional("SHARDWALLET_SAGA_SWEEP_INTERVAL_SECONDS", "15"))
# The sweeper sends nothing while the broker's queue holds this many messages: they reach the
# transfers it would re-drive anyway, and re-sending during a backlog only lengthens it.
SAGA_SWEEP_MAX_BACKLOG = int(ENV.optional("SHARDWALLET_SAGA_SWEEP_MAX_BACKLOG", "1000"))
IDEMPOTENCY_KEY_TTL_HOURS = 24

# Audit: change data capture from every shard into ClickHouse (apps/audit).
# Embedded chDB under AUDIT_DIR, owned by `manage.py run_cdc`, which also serves auditors'
# read-only SQL on 127.0.0.1:AUDIT_HTTP_PORT; or a ClickHouse server when CLICKHOUSE_URL is
# set (e.g. http://user:password@host:8123).
AUDIT_DIR = _env_path(ENV.optional("SHARDWALLET_AUDIT_DIR", str(DEVSTACK_DIR / "audit")))
CLICKHOUSE_URL = ENV.optional("CLICKHOUSE_URL", "")
# Server mode: the auditors' tools (audit_sql, audit_query, reconcile) connect with this DSN
# only, a read-only ClickHouse user (docs/ARCHITECTURE.md, "Auditor access"); never with
# CLICKHOUSE_URL, the writer's. Unset: they refuse to run.
CLICKHOUSE_AUDITOR_URL = ENV.optional("SHARDWALLET_CLICKHOUSE_AUDITOR_URL", "")
AUDIT_HTTP_PORT = int(ENV.optional("SHARDWALLET_AUDIT_HTTP_PORT", "25123"))
# Each store's slot on a shard is `<prefix>_<first 12 hex digits of the store's id>`.
AUDIT_SLOT_PREFIX = ENV.optional("SHARDWALLET_AUDIT_SLOT_PREFIX", "shardwallet_audit")
AUDIT_PUBLICATION = ENV.optional("SHARDWALLET_AUDIT_PUBLICATION", "shardwallet_audit")
# The shard tables captured (transfers_idempotency is left out: replayable responses, not money),
# and the shard's journal of bucket moves (sharding_move_marker, into audit.move_journal).
AUDIT_TABLES = ENV.optional(
    "SHARDWALLET_AUDIT_TABLES",
    "ledger_wallet,ledger_entry,transfers_transfer,transfers_event,transfers_payee_credit,holds_hold,"
    "refunds_refund,events_event,sharding_move_marker,transfers_idempotency,ledger_movement_key",
).split(",")
AUDIT_BATCH_MAX_CHANGES = int(ENV.optional("SHARDWALLET_AUDIT_BATCH_MAX_CHANGES", "20000"))
AUDIT_BATCH_MAX_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_BATCH_MAX_SECONDS", "0.2"))
# /health shows the CDC process (and its lag) only where one is expected: `serve` sets this.
AUDIT_CDC_EXPECTED = ENV.optional("SHARDWALLET_AUDIT_CDC_EXPECTED", "0") == "1"
# The CDC process lowers its CPU priority by this much (0: not at all).
AUDIT_CDC_NICE = int(ENV.optional("SHARDWALLET_AUDIT_CDC_NICE", "10"))
AUDIT_MAX_LAG_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_MAX_LAG_SECONDS", "30"))
# How often the CDC process looks for shards added to the map (each gets its own reader).
# Heartbeats into each shard's WAL (and a look at its slot) every so often: idle shards'
# slots move on, and lag is measured in seconds even when nothing streams.
AUDIT_HEARTBEAT_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_HEARTBEAT_SECONDS", "5"))
# /health is degraded past this much WAL held by a slot (the local stack caps it at
# max_slot_wal_keep_size = 2GB, past which the slot is lost).
AUDIT_MAX_RETAINED_BYTES = int(ENV.optional("SHARDWALLET_AUDIT_MAX_RETAINED_BYTES", str(1 << 30)))
# A stopped stream (apps.audit.stops) tries again this often, in case the cause went away.
AUDIT_STOPPED_RETRY_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_STOPPED_RETRY_SECONDS", "60"))
AUDIT_SHARD_POLL_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_SHARD_POLL_SECONDS", "3"))
# How often the CDC process copies the operators' trail (operators_action) into the audit store.
AUDIT_OPERATOR_TRAIL_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_OPERATOR_TRAIL_SECONDS", "2"))

# Embedded mode: the auditors the CDC process's endpoint lets in (apps/audit/auditors.py):
# `name:secret,...` and/or a file of `name:secret` lines (a secret may be `sha256:<hex>`).
# Only the secrets' SHA-256 are kept. With no account the endpoint does not start. `make run`
# writes one for its stack into DEVSTACK_DIR/audit_auditors, the file's default place.
_AUDITORS_FILE_EXPLICIT = "SHARDWALLET_AUDIT_AUDITORS_FILE" in os.environ
AUDIT_AUDITORS_FILE = _env_path(ENV.optional("SHARDWALLET_AUDIT_AUDITORS_FILE", str(DEVSTACK_DIR / "audit_auditors")))
if _AUDITORS_FILE_EXPLICIT and not AUDIT_AUDITORS_FILE.exists():
    raise ImproperlyConfigured(f"SHARDWALLET_AUDIT_AUDITORS_FILE names {AUDIT_AUDITORS_FILE}, which does not exist")
# Not through ENV: SHARDWALLET_AUDIT_AUDITORS_FILE is a file of accounts of its own (above),
# read beside the inline ones, not instead of them.
AUDIT_AUDITORS, _first_auditor = load_accounts(os.environ.get("SHARDWALLET_AUDIT_AUDITORS", ""), AUDIT_AUDITORS_FILE)
# How this project's tools log in to the endpoint: `name:secret`, else the first account above
# given in clear.
AUDIT_LOGIN = parse_login(ENV.optional("SHARDWALLET_AUDIT_LOGIN", "")) or _first_auditor
# Every auditor query runs under these limits, set on the read-only chDB connections
# themselves: readonly=1 forbids the query to change them. A reconcile reads one row per
# wallet: keep AUDIT_QUERY_MAX_RESULT_ROWS above the number of wallets (and above ~2,000:
# clickhouse-connect reads system.settings when it connects).
AUDIT_QUERY_MAX_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_SECONDS", "60"))
AUDIT_QUERY_MAX_MEMORY_BYTES = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_MEMORY_BYTES", str(2 << 30)))
AUDIT_QUERY_MAX_RESULT_ROWS = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_RESULT_ROWS", "10000000"))
# Bytes of one query's result at most (as ClickHouse counts them, before formatting): the
# endpoint holds a result in memory while it sends it.
AUDIT_QUERY_MAX_RESULT_BYTES = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_RESULT_BYTES", str(512 << 20)))
# Connections the auditors' endpoint serves at once (one thread each; one more is answered 503),
# and how long a socket may sit idle or stalled mid-request before it is closed.
AUDIT_HTTP_MAX_CONNECTIONS = int(ENV.optional("SHARDWALLET_AUDIT_HTTP_MAX_CONNECTIONS", "32"))
AUDIT_HTTP_TIMEOUT_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_HTTP_TIMEOUT_SECONDS", "30"))
# Threads per query: the CDC's readers and inserts share the process's cores with it.
AUDIT_QUERY_MAX_THREADS = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_THREADS", "1"))
# Queries at once; one more is answered 503 (ClickHouse code 202) at once, not queued.
AUDIT_QUERY_MAX_CONCURRENT = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_MAX_CONCURRENT", "2"))
# audit.query_log: rows are buffered and inserted by one thread at most this often; with
# this many waiting (the store refuses them), queries are refused rather than run unlogged.
AUDIT_QUERY_LOG_FLUSH_SECONDS = float(ENV.optional("SHARDWALLET_AUDIT_QUERY_LOG_FLUSH_SECONDS", "1"))
AUDIT_QUERY_LOG_MAX_PENDING = int(ENV.optional("SHARDWALLET_AUDIT_QUERY_LOG_MAX_PENDING", "10000"))

# Celery over Redis. Messages are triggers, never the truth: the database is.
# A Redis that vanishes without closing its connections (its host down or cut off, a Sentinel
# failover) must not hang a publish, an API request with it, or a worker: every broker socket
# (the sentinels' too) has a timeout, and a worker drops a connection whose BRPOP reply is
# overdue by the health check's interval, then reconnects (to the new master, with sentinels).
REDIS_SOCKET_TIMEOUT_SECONDS = float(ENV.optional("SHARDWALLET_REDIS_SOCKET_TIMEOUT_SECONDS", "5"))
REDIS_CONNECT_TIMEOUT_SECONDS = float(ENV.optional("SHARDWALLET_REDIS_CONNECT_TIMEOUT_SECONDS", "2"))
CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = broker_settings(
    REDIS_URL,
    REDIS_SENTINEL,
    {
        "visibility_timeout": 300,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_SECONDS,
        "socket_keepalive": True,
        "health_check_interval": 10,
    },
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
# JSON only (no pickle: a message is never code), and no remote control: nothing here uses it,
# and with it anyone who can write to the broker could shut workers down or change their queues.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Publishing must not hang an API request when Redis is down: the sweeper catches up.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# Webhook work has a queue of its own, consumed by its own worker (`run_worker --queues webhooks`):
# a slow or dead endpoint can only delay other deliveries, never a transfer's saga.
CELERY_TASK_ROUTES = {"apps.webhooks.tasks.*": {"queue": "webhooks"}}
# Holds: how long one lasts when the request names no expiry, and the longest it may last.
HOLD_DEFAULT_SECONDS = int(ENV.optional("SHARDWALLET_HOLD_DEFAULT_SECONDS", str(7 * 24 * 3600)))
HOLD_MAX_SECONDS = int(ENV.optional("SHARDWALLET_HOLD_MAX_SECONDS", str(30 * 24 * 3600)))
HOLD_EXPIRY_INTERVAL_SECONDS = float(ENV.optional("SHARDWALLET_HOLD_EXPIRY_INTERVAL_SECONDS", "10"))
# Refunds: a refund still pending this long after its request (the request died between its
# steps, or a refused debit was not settled) is carried on by a beat job, as its repeat would.
REFUND_RESUME_AFTER_SECONDS = float(ENV.optional("SHARDWALLET_REFUND_RESUME_AFTER_SECONDS", "30"))
REFUND_RESUME_INTERVAL_SECONDS = float(ENV.optional("SHARDWALLET_REFUND_RESUME_INTERVAL_SECONDS", "10"))
# Events and webhooks (apps/events, apps/webhooks). Events are kept this many days on the shards.
EVENT_RETENTION_DAYS = int(ENV.optional("SHARDWALLET_EVENT_RETENTION_DAYS", "30"))
# How often the outbox is drained into deliveries and due deliveries are sent (the webhooks queue).
WEBHOOK_DISPATCH_INTERVAL_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_DISPATCH_INTERVAL_SECONDS", "1"))
WEBHOOK_SEND_INTERVAL_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_SEND_INTERVAL_SECONDS", "1"))
# One attempt: connect and each read within this, the whole answer within twice this; at most
# this many bytes of the answer are read; redirects are never followed.
WEBHOOK_TIMEOUT_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_TIMEOUT_SECONDS", "5"))
WEBHOOK_MAX_RESPONSE_BYTES = int(ENV.optional("SHARDWALLET_WEBHOOK_MAX_RESPONSE_BYTES", "65536"))
# A sender's claim on the deliveries it took: one killed mid-send leaves them to be sent again after
# this; a turn running longer hands its remaining deliveries back.
WEBHOOK_LEASE_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_LEASE_SECONDS", "60"))
# Retries: exponential from BASE to MAX seconds between attempts, with jitter, for RETRY_FOR
# seconds after the event (3 days); then the delivery is failed.
WEBHOOK_BACKOFF_BASE_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_BACKOFF_BASE_SECONDS", "10"))
WEBHOOK_BACKOFF_MAX_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_BACKOFF_MAX_SECONDS", "3600"))
WEBHOOK_RETRY_FOR_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_RETRY_FOR_SECONDS", str(3 * 24 * 3600)))
# An endpoint failing without a success for this long (and at least MIN_FAILURES times) is disabled.
WEBHOOK_DISABLE_AFTER_SECONDS = float(ENV.optional("SHARDWALLET_WEBHOOK_DISABLE_AFTER_SECONDS", str(3 * 24 * 3600)))
WEBHOOK_DISABLE_MIN_FAILURES = int(ENV.optional("SHARDWALLET_WEBHOOK_DISABLE_MIN_FAILURES", "20"))
# The most deliveries one endpoint may have waiting; events past it are counted, not queued
# (the client catches up from GET /v1/events). Endpoints per client, at most.
WEBHOOK_MAX_PENDING_PER_ENDPOINT = int(ENV.optional("SHARDWALLET_WEBHOOK_MAX_PENDING_PER_ENDPOINT", "10000"))
WEBHOOK_MAX_ENDPOINTS_PER_CLIENT = int(ENV.optional("SHARDWALLET_WEBHOOK_MAX_ENDPOINTS_PER_CLIENT", "16"))
# Deliveries and their attempts are kept this many days.
WEBHOOK_DELIVERY_RETENTION_DAYS = int(ENV.optional("SHARDWALLET_WEBHOOK_DELIVERY_RETENTION_DAYS", "30"))
# URLs resolving to loopback, private, link-local or other non-public addresses are refused
# (SSRF) unless this is on: development stacks and tests turn it on, production never does.
WEBHOOK_ALLOW_PRIVATE_URLS = ENV.flag("SHARDWALLET_WEBHOOK_ALLOW_PRIVATE_URLS", not ENV.production)
# Plain http:// endpoints (the events carry amounts and wallet ids): refused in production.
WEBHOOK_REQUIRE_HTTPS = ENV.flag("SHARDWALLET_WEBHOOK_REQUIRE_HTTPS", ENV.production)

CELERY_BEAT_SCHEDULE = {
    "sweep-stalled-transfers": {
        "task": "apps.transfers.tasks.sweep_stalled_transfers",
        "schedule": SAGA_SWEEP_INTERVAL_SECONDS,
    },
    "purge-idempotency-records": {
        "task": "apps.transfers.tasks.purge_idempotency_records",
        "schedule": 3600.0,
    },
    "expire-holds": {
        "task": "apps.holds.tasks.expire_holds",
        "schedule": HOLD_EXPIRY_INTERVAL_SECONDS,
    },
    "resume-stalled-refunds": {
        "task": "apps.refunds.tasks.resume_stalled_refunds",
        "schedule": REFUND_RESUME_INTERVAL_SECONDS,
    },
    "dispatch-events": {
        "task": "apps.webhooks.tasks.dispatch_events",
        "schedule": WEBHOOK_DISPATCH_INTERVAL_SECONDS,
    },
    "send-webhooks": {
        "task": "apps.webhooks.tasks.send_deliveries",
        "schedule": WEBHOOK_SEND_INTERVAL_SECONDS,
    },
    "purge-events-and-deliveries": {
        "task": "apps.webhooks.tasks.purge_old",
        "schedule": 3600.0,
    },
}

ENV.check()  # again: a variable read since the first check may name a file that cannot be read
