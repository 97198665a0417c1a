"""The Celery application, configured from :class:`~workers.settings.WorkerSettings`.

Start the workers and the one beat with::

    celery -A workers.app worker --loglevel INFO --concurrency 2
    celery -A workers.app beat --loglevel INFO     # exactly one, see docs/deployment.md

Choices, each against a failure Celery users know:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged
  only when its task ends, so a worker killed mid-task (kill -9, OOM) does not
  lose it; with the prefork pool a lost child's task is requeued at once.
- ``worker_prefetch_multiplier = 1``: a worker holds one message per process;
  the rest stay in the broker for other workers.
- Redis ``visibility_timeout`` longer than ``task_time_limit``: Redis hands an
  unacknowledged message to another worker once the timeout passes, so a
  timeout shorter than the longest task would run that task twice at once.
  Tasks are idempotent, so a late redelivery (after a whole worker died) only
  repeats work; the tick re-queues lost work from the databases much sooner.
- JSON only, for arguments and results: no pickle from the broker.
"""

from __future__ import annotations

from celery import Celery

from workers.settings import WorkerSettings

__all__ = ["QUEUE", "app", "make_app", "worker_settings"]

QUEUE = "boinc-pipeline"


def make_app(worker: WorkerSettings) -> Celery:
    """Build the Celery application for these settings, with the tick in its beat schedule."""
    app = Celery("boinc_pipeline", broker=worker.broker, backend=worker.result_backend)
    transport_options: dict[str, object] = {"visibility_timeout": int(worker.visibility_timeout)}
    backend_options = dict(transport_options)
    if worker.key_prefix:
        # kombu and Celery's Redis backend put it in front of every key they use.
        backend_options["global_keyprefix"] = worker.key_prefix
        if worker.broker.startswith("redis"):
            transport_options["global_keyprefix"] = worker.key_prefix
    app.conf.update(
        include=["workers.tasks", "workers.beat"],
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=int(worker.task_time_limit),
        task_soft_time_limit=int(worker.task_time_limit * 0.9),
        broker_transport_options=transport_options,
        result_backend_transport_options=backend_options,
        result_expires=24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        beat_max_loop_interval=max(1.0, min(worker.tick_interval, 30.0)),
        beat_schedule={
            "boinc-pipeline-tick": {
                "task": "boinc_pipeline.tick",
                "schedule": worker.tick_interval,
                # No result: the beat must not subscribe to the result backend.
                "options": {"expires": worker.tick_interval, "ignore_result": True},
            }
        },
    )
    return app


worker_settings = WorkerSettings.load()
app = make_app(worker_settings)

# Connects the single-beat guard to ``celery beat`` start-up.
import workers.beat  # noqa: E402, F401
