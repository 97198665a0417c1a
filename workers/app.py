"""The Celery application; its tasks arrive with the workers issue."""

from __future__ import annotations

import os

from celery import Celery

BROKER_URL = os.environ.get("BOINC_PIPELINE_BROKER", "redis://localhost:6379/0")

app = Celery("boinc_pipeline", broker=BROKER_URL, backend=BROKER_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
)
