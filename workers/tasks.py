"""The Celery tasks: thin wrappers that run :mod:`workers.jobs` and decide whether to retry.

==============================  ==============================================================
task name                       what it does
==============================  ==============================================================
``boinc_pipeline.tick``         queues the work due now (beat runs it every ``tick_interval``)
``boinc_pipeline.top_up``       (server, app): fills that app's cushion from its active sweeps,
                                under the app's Redis lock
``boinc_pipeline.poll``         (sweep, version): tracks one sweep; marks it complete at the end
``boinc_pipeline.harvest``      (sweep, version): finds finished results, fans out chunks
``boinc_pipeline.harvest_chunk``  (sweep, version, result names, files): ingests one chunk
``boinc_pipeline.retry``        (sweep, version, reason): resubmits failed points now
``boinc_pipeline.submit``       (spec or name, server): records a sweep and tops up its app
==============================  ==============================================================

Tasks queued by the tick and by the harvest fan-out keep no result (their
outcome is in the state database): a process that queues a task with a result
subscribes to the Redis result backend, and that subscription does not survive
a Redis restart. Tasks queued by :mod:`workers.enqueue` keep theirs.

Delivery is at-least-once and every task is idempotent. A task whose error is
recoverable (:func:`~workers.resources.is_recoverable`) is retried with
exponential backoff and jitter, at most ``max_retries`` times; a task that
finally fails writes a ``task_failed`` event with its error into the state
database (if that database is reachable; the worker log has it in any case).
"""

from __future__ import annotations

import functools
import logging
import random
import traceback
from collections.abc import Callable
from typing import Any

from celery import group, signals
from celery.exceptions import Retry

from workers import jobs
from workers.app import app, worker_settings
from workers.resources import Resources, is_recoverable, resources

__all__ = [
    "backoff",
    "enqueue_once",
    "harvest",
    "harvest_chunk",
    "poll",
    "retry",
    "submit",
    "tick",
    "top_up",
]

log = logging.getLogger(__name__)


def backoff(retries: int, base: float, cap: float) -> float:
    """Delay before retry number ``retries + 1``: exponential, capped, half of it random."""
    ceiling = min(cap, base * 2**retries)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _pending_key(res: Resources, kind: str, key: str) -> str:
    return res.key("pending", kind, key)


def _record_failure(res: Resources, task: str, args: tuple[Any, ...], exc: BaseException) -> None:
    """Write a ``task_failed`` event; if the state database is unreachable, log it only."""
    sweep_id = None
    try:
        if task != "boinc_pipeline.top_up" and args and isinstance(args[0], str):
            version = args[1] if len(args) > 1 and isinstance(args[1], int) else None
            sweep_id = res.state.get_sweep(args[0], version).id
    except Exception:  # the sweep may not exist; record without it
        sweep_id = None
    try:
        res.state.log_event(
            "task_failed",
            f"{task} failed: {type(exc).__name__}: {exc}"[:2000],
            sweep_id=sweep_id,
            task=task,
            args=list(args),
            error=type(exc).__name__,
            recoverable=is_recoverable(exc),
            traceback="".join(traceback.format_exception(exc))[-4000:],
        )
    except Exception as second:  # nothing more can be done than log it
        log.error("%s failed (%s) and its failure could not be recorded: %s", task, exc, second)


def pipeline_task(
    name: str, pending: Callable[[tuple[Any, ...]], tuple[str, str]] | None = None, **options: Any
) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    """Register ``fn(res, *args)`` as task ``boinc_pipeline.<name>`` with the retry rules.

    ``pending(args)`` names the marker the tick set when it queued the task; it
    is removed when the task ends for good, so the tick may queue it again.
    """

    def decorate(fn: Callable[..., dict[str, Any]]) -> Any:
        @app.task(name=f"boinc_pipeline.{name}", bind=True, **options)
        @functools.wraps(fn)
        def task(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            res = resources(worker_settings)
            done = True
            try:
                return fn(res, *args, **kwargs)
            except Retry:
                done = False
                raise
            except Exception as exc:
                if is_recoverable(exc):
                    res.reset()
                    if self.request.retries < worker_settings.max_retries:
                        delay = backoff(
                            self.request.retries,
                            worker_settings.retry_backoff,
                            worker_settings.retry_max,
                        )
                        log.warning(
                            "%s%r: %s: %s; retry %d in %.1f s",
                            self.name,
                            args,
                            type(exc).__name__,
                            exc,
                            self.request.retries + 1,
                            delay,
                        )
                        done = False
                        raise self.retry(exc=exc, countdown=delay) from exc
                _record_failure(res, self.name, args, exc)
                raise
            finally:
                if done and pending is not None:
                    kind, key = pending(args)
                    try:
                        res.redis.delete(_pending_key(res, kind, key))
                    except Exception as exc:  # the marker expires by itself
                        log.debug("could not clear the pending marker: %s", exc)

        return task

    return decorate


@signals.worker_init.connect
def _preload(**_kwargs: Any) -> None:
    """Import the pipeline's stages in the worker's main process, before the pool forks.

    :mod:`workers.jobs` imports them on first use, so that queuing a task stays
    light; in a worker, every pool process would otherwise pay those imports
    (pandas and pyarrow among them, about 0.6 s of CPU) on its first tasks, once
    per pool process instead of once per worker.
    """
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pipeline.fast
    import pipeline.harvest
    import pipeline.server
    import pipeline.store
    import pipeline.submit
    import pipeline.track  # noqa: F401


# --------------------------------------------------------------------------- tasks


def _sweep_key(kind: str) -> Callable[[tuple[Any, ...]], tuple[str, str]]:
    return lambda args: (kind, f"{args[0]}:{args[1]}")


@pipeline_task("top_up", pending=lambda args: ("top_up", f"{args[0]}:{args[1]}"))
def top_up(res: Resources, server: str, app_name: str) -> dict[str, Any]:
    """Fill one app's cushion on one server, unless another worker is doing it right now."""
    lock = jobs.app_lock(res, server, app_name)
    if not lock.acquire():
        return {"server": server, "app": app_name, "skipped": "another worker holds the lock"}
    with lock:
        return jobs.top_up_app(res, server, app_name, lock)


@pipeline_task("poll", pending=_sweep_key("poll"))
def poll(res: Resources, name: str, version: int | None = None) -> dict[str, Any]:
    """Track one sweep."""
    return jobs.poll_sweep(res, name, version)


@pipeline_task("harvest", pending=_sweep_key("harvest"))
def harvest(res: Resources, name: str, version: int | None = None) -> dict[str, Any]:
    """Plan one sweep's harvest and queue its chunks as a group."""
    plan = jobs.harvest_plan(res, name, version)
    chunks = plan.pop("chunks")
    files = plan.pop("files")
    if chunks:
        group(
            harvest_chunk.s(name, plan["version"], chunk, {r: files[r] for r in chunk}).set(
                ignore_result=True
            )
            for chunk in chunks
        ).apply_async()
    return {**plan, "chunks": len(chunks)}


@pipeline_task("harvest_chunk")
def harvest_chunk(
    res: Resources,
    name: str,
    version: int,
    results: list[str],
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ingest one chunk of a sweep's results (``files``: where the plan found them)."""
    return jobs.harvest_chunk(res, name, version, results, files)


@pipeline_task("retry")
def retry(
    res: Resources, name: str, version: int | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Resubmit a sweep's failed, lost and bad-output points now, under its app's lock."""
    record = res.state.get_sweep(name, version)
    lock = jobs.app_lock(res, record.server, record.app)
    if not lock.acquire():
        from workers.locks import LockLost

        raise LockLost(f"a top-up of {record.app} on {record.server} is running; retrying later")
    with lock:
        return jobs.retry_sweep(res, name, record.version, reason, lock)


@pipeline_task("submit")
def submit(
    res: Resources,
    spec: dict[str, Any] | None = None,
    name: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """Record a sweep and top up its app once (what ``boinc-pipeline submit --async`` queues)."""
    return jobs.submit_sweep(
        res, spec=spec, name=name, server=server, lock_for=lambda s, a: jobs.app_lock(res, s, a)
    )


def enqueue_once(kind: str, key: str, args: tuple[Any, ...]) -> bool:
    """Queue task ``kind`` unless the same kind and key is still pending; say whether it was."""
    res = resources(worker_settings)
    marker = _pending_key(res, kind, key)
    if not res.redis.set(marker, "1", nx=True, ex=max(1, int(worker_settings.pending_ttl))):
        return False
    try:
        TASKS[kind].apply_async(args=args, ignore_result=True)
    except BaseException:
        res.redis.delete(marker)
        raise
    return True


_TICK_LIMIT = max(60, int(worker_settings.tick_interval * 4))


@pipeline_task(
    "tick", time_limit=_TICK_LIMIT, soft_time_limit=int(_TICK_LIMIT * 0.9), ignore_result=True
)
def tick(res: Resources) -> dict[str, Any]:
    """Queue the top-ups, polls and harvests due now (run by the one beat)."""
    return jobs.tick(res, enqueue_once)


TASKS: dict[str, Any] = {"top_up": top_up, "poll": poll, "harvest": harvest}
