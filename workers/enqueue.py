"""Queue work for the Celery workers from anywhere (the ``--async`` commands, a notebook).

Importing this module starts nothing and needs no worker: it validates what it
can locally (the spec file) and sends a message naming the task, through the
broker the settings name; it returns the task id. The workers need the same
state database and server configs (``BOINC_PIPELINE_STATE``,
``BOINC_PIPELINE_SERVERS``) as the machine that queues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["forget", "harvest_async", "poll_async", "retry_async", "submit_async"]


def _send(task: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None) -> str:
    from workers.app import app

    return str(app.send_task(f"boinc_pipeline.{task}", args=args or [], kwargs=kwargs or {}).id)


def submit_async(name_or_spec_path: str, server: str | None = None) -> str:
    """Queue a sweep's registration and one top-up of its app; return the task id.

    A path to a spec file (``*.yaml``/``*.yml`` or an existing file) is read and
    validated here and sent whole, so the workers need not see the file; any
    other value is a recorded sweep's name. ``server`` is the name of a server
    config the workers know (required for a sweep not yet recorded).
    """
    from pipeline.errors import ConfigError
    from pipeline.spec import load_spec

    target = name_or_spec_path
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        spec = load_spec(target)
        if not server:
            raise ConfigError(f"submitting {target} to the workers needs --server NAME")
        return _send("submit", kwargs={"spec": spec.model_dump(mode="json"), "server": server})
    return _send("submit", kwargs={"name": target, "server": server})


def harvest_async(name: str, version: int | None = None) -> str:
    """Queue a harvest of a recorded sweep (chunks fan out on the workers); return the task id."""
    return _send("harvest", [name, version])


def poll_async(name: str, version: int | None = None) -> str:
    """Queue a tracking pass of a recorded sweep; return the task id."""
    return _send("poll", [name, version])


def retry_async(name: str, version: int | None = None, reason: str | None = None) -> str:
    """Queue a resubmission of a sweep's failed, lost and bad-output points; return the task id."""
    return _send("retry", [name, version, reason])


def forget(result: Any) -> None:
    """Delete a task's result from the backend and stop this client waiting for it.

    A Celery client keeps every result it has seen, and those of the tasks it
    queued (a harvest's chunks), until the objects are finalised, which then
    talks to Redis again: at interpreter exit, or after the client was closed.
    Call this once a result has been read.
    """
    from celery.result import AsyncResult

    held = [result]
    for child in result.children or ():
        held += getattr(child, "results", None) or [child]
    result.forget()
    for one in held:
        if isinstance(one, AsyncResult) and one.backend is not None:
            one.backend.remove_pending_result(one)
            one.backend = None  # its finaliser has nothing left to cancel
