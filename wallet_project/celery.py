"""The Celery app: saga workers and the beat schedule (sweeper, idempotency purge)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wallet_project.settings")

app = Celery("shardwallet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
