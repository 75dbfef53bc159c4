"""The Celery app: saga workers and the beat schedule (sweeper, idempotency purge)."""

import os

from celery import Celery
from celery.signals import before_task_publish

from apps.common.queue_age import stamp_sent_at
from apps.common.worker_readiness import ReadinessBeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")

app = Celery("shardwallet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Each worker touches a file while it consumes: `manage.py worker_ready` checks it.
app.steps["consumer"].add(ReadinessBeat)
# Each message says when it was sent: the sweeper reads the queue's oldest (apps.common.queue_age).
before_task_publish.connect(stamp_sent_at, weak=False)
