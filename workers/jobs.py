"""The work behind each task, as plain functions of :class:`~workers.resources.Resources`.

Each function builds what it needs from the resources, calls one pipeline
function and returns a JSON-ready dict. None of them knows about Celery, so
they run the same in a worker, in a test or in a shell. Every one of them is
idempotent: submission resolves its intents against the BOINC database, and
the harvest claims results through the ledger, so running any of them twice,
or two at once, neither duplicates nor loses anything.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from pipeline.errors import ConfigError
from pipeline.spec import SweepSpec
from pipeline.state import SweepRecord
from pipeline.transport import Transport
from workers.locks import FencedLock
from workers.resources import Resources
from workers.schedule import parse_schedule

__all__ = [
    "harvest_chunk",
    "harvest_plan",
    "poll_sweep",
    "retry_sweep",
    "submit_sweep",
    "tick",
    "top_up_app",
]

log = logging.getLogger(__name__)

#: Point states in which something may still happen without a user's action
#: (the same rule as :meth:`pipeline.api.Sweep.is_finished`).
OPEN_STATES = ("planned", "queued", "running", "done", "failed", "lost", "bad_output")


class FencedTransport:
    """A transport whose ``run`` first checks that the top-up lock is still held.

    Every workunit creation goes through ``run``, so a holder whose lock expired
    (a frozen worker, Redis restarted empty) stops before it creates anything
    more; everything else is passed through unchanged.
    """

    def __init__(self, inner: Transport, check: Callable[[], None]) -> None:
        self._inner = inner
        self._check = check

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Check the lock, then run the command on the real transport."""
        self._check()
        return self._inner.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _sweep(res: Resources, name: str, version: int | None) -> tuple[SweepSpec, SweepRecord]:
    record = res.state.get_sweep(name, version)
    return SweepSpec.model_validate(record.spec), record


def _context(
    res: Resources, server_name: str, specs: Sequence[SweepSpec], lock: FencedLock | None
) -> Any:
    from pipeline.submit import SubmitContext

    server = res.server(server_name)
    modes = {s.submit.mode for s in specs if s.submit.mode}
    mode = modes.pop() if len(modes) == 1 else server.config.mode
    transport = server.transport
    if lock is not None:
        transport = cast(Transport, FencedTransport(transport, lock.check))
    return SubmitContext(
        state=res.state,
        transport=transport,
        boinc=server.boinc,
        mode=mode,
        python=server.config.python,
    )


def app_lock(res: Resources, server_name: str, app: str) -> FencedLock:
    """The lock that one top-up (or retry) of ``app`` on ``server_name`` holds at a time."""
    return FencedLock(
        res.redis,
        f"{res.namespace}:topup:{server_name}:{app}",
        res.worker.lock_ttl,
        prefix=res.worker.key_prefix,
    )


# --------------------------------------------------------------------------- submission


def top_up_app(
    res: Resources, server_name: str, app: str, lock: FencedLock | None = None
) -> dict[str, Any]:
    """Fill one app's cushion on one server from every active sweep of that app."""
    active = [
        rec
        for rec in res.state.list_sweeps()
        if rec.status == "active" and rec.server == server_name and rec.app == app
    ]
    if not active:
        return {"server": server_name, "app": app, "sweeps": 0, "created": 0}
    from pipeline.submit import top_up

    sweeps = [(SweepSpec.model_validate(rec.spec), rec) for rec in active]
    ctx = _context(res, server_name, [s for s, _r in sweeps], lock)
    cushion = res.server(server_name).config.cushion_for(app)
    report = top_up(ctx, app, cushion, sweeps)
    return {
        "server": server_name,
        "app": app,
        "sweeps": len(sweeps),
        "cushion": cushion,
        "queued_before": report.queued_before,
        "submitted": report.submitted,
        "created": report.report.created,
        "fence": lock.token if lock is not None else None,
    }


def submit_sweep(
    res: Resources,
    *,
    spec: dict[str, Any] | None = None,
    name: str | None = None,
    server: str | None = None,
    lock_for: Callable[[str, str], FencedLock] | None = None,
) -> dict[str, Any]:
    """Record a sweep (from its spec, or by name) and top up its app once."""
    from pipeline.submit import register_sweep

    if spec is not None:
        sweep_spec = SweepSpec.model_validate(spec)
        if not server:
            raise ConfigError("submitting a spec needs a server name (--server NAME)")
        record = register_sweep(res.state, res.server(server).boinc, sweep_spec, server=server)
    elif name is not None:
        sweep_spec, record = _sweep(res, name, None)
        if server and server != record.server:
            record = register_sweep(res.state, res.server(server).boinc, sweep_spec, server=server)
    else:
        raise ConfigError("give a spec or a sweep name to submit")
    lock = lock_for(record.server, record.app) if lock_for else None
    if lock is not None and not lock.acquire():
        return {"sweep": record.name, "version": record.version, "topped_up": False}
    try:
        report = top_up_app(res, record.server, record.app, lock)
    finally:
        if lock is not None:
            lock.release()
    return {"sweep": record.name, "version": record.version, "topped_up": True, **report}


def retry_sweep(
    res: Resources, name: str, version: int | None, reason: str | None, lock: FencedLock | None
) -> dict[str, Any]:
    """Submit a new attempt now for the sweep's failed, lost and bad-output points."""
    from pipeline.submit import retry_points

    spec, record = _sweep(res, name, version)
    ctx = _context(res, record.server, [spec], lock)
    report = retry_points(ctx, spec, record, reason=reason)
    return {"sweep": name, "version": record.version, "created": report.created}


# --------------------------------------------------------------------------- tracking


def poll_sweep(res: Resources, name: str, version: int | None) -> dict[str, Any]:
    """Track one sweep; mark it ``complete`` once nothing can change without a user."""
    from pipeline.track import track_sweep

    _spec, record = _sweep(res, name, version)
    status = track_sweep(res.state, res.server(record.server).boinc, record)
    finished = not any(status.counts.get(s, 0) for s in OPEN_STATES)
    if finished and record.status == "active":
        res.state.set_sweep_status(record.id, "complete")
        res.state.log_event(
            "complete", "every point reached an end", sweep_id=record.id, **status.counts
        )
    return {**status.as_dict(), "finished": finished}


# --------------------------------------------------------------------------- harvest


def harvest_plan(res: Resources, name: str, version: int | None) -> dict[str, Any]:
    """Find the sweep's finished results and their files; split them into chunks of names.

    Done points without a result file are marked ``lost`` here (as the
    in-process harvest does), so the chunks hold only results that can be read.
    ``files`` maps each result name to its file, relative to ``<results>/<app>/``
    (``<YYYY-MM-DD>/<file name>``), so that a chunk needs no listing of its own.
    """
    from pipeline import harvest as hv
    from pipeline.track import track_sweep

    spec, record = _sweep(res, name, version)
    server = res.server(record.server)
    res.store().recover()
    track_sweep(res.state, server.boinc, record)
    done = hv._done_points(res.state, server.boinc, record)
    names: list[str] = []
    where: dict[str, str] = {}
    lost = 0
    if done:
        files = hv._find_files(
            server, spec, record, list(done.values()), server.config.timezone, time.time()
        )
        missing = [item for result, item in done.items() if result not in files]
        if missing:
            hv._mark_lost(res.state, record, missing, server.results_dir, spec.app)
            lost = len(missing)
        names = sorted(files)
        app_dir = posixpath.join(server.results_dir, spec.app)
        where = {n: posixpath.relpath(files[n], app_dir) for n in names}
    size = res.worker.harvest_chunk
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    return {
        "sweep": name,
        "version": record.version,
        "done": len(done),
        "lost": lost,
        "chunks": chunks,
        "files": where,
    }


def harvest_chunk(
    res: Resources,
    name: str,
    version: int,
    results: Sequence[str],
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Ingest one chunk of results (by result name) into the store, exactly once.

    Only the chunk's own results are looked up: their done points in the state
    database and their canonical results in the BOINC database, by name. Their
    files are those the plan found (``files``, relative to ``<results>/<app>/``);
    without them (a message from an older plan) the result folder is listed.
    """
    from pipeline import harvest as hv
    from pipeline.archive import DEFAULT_LIMITS

    spec, record = _sweep(res, name, version)
    server = res.server(record.server)
    done = hv.done_results(res.state, server.boinc, record, results)
    report = hv.HarvestReport(done=len(done))
    if done:
        if files is None:
            paths = hv._find_files(
                server, spec, record, list(done.values()), server.config.timezone, time.time()
            )
        else:
            paths = _chunk_paths(posixpath.join(server.results_dir, spec.app), files, done)
        found = [done[r] for r in sorted(done) if r in paths]
        report.found = len(found)
        if found:
            store = res.store()
            hv._harvest_chunk(
                res.state, server, store, spec, record, found, paths, DEFAULT_LIMITS, report
            )
    return {"sweep": name, "version": version, **report.as_dict()}


_RELATIVE_FILE = re.compile(r"\d{4}-\d{2}-\d{2}/[^/]+")


def _chunk_paths(app_dir: str, files: dict[str, str], done: dict[str, Any]) -> dict[str, str]:
    """Return {result name: path} for the chunk's files, each checked to be that result's file.

    A name is taken only as ``<YYYY-MM-DD>/<file name>`` whose file name is
    one of the result's archives; anything else is left out (its point stays
    ``done`` for the next harvest).
    """
    from pipeline.boinc import parse_result_file

    paths: dict[str, str] = {}
    for result, relative in files.items():
        if result not in done:
            continue
        parsed = parse_result_file(posixpath.basename(relative))
        if not _RELATIVE_FILE.fullmatch(relative) or parsed is None or parsed.result_name != result:
            log.warning("harvest: %r is not a file of result %r; skipped", relative, result)
            continue
        paths[result] = posixpath.join(app_dir, relative)
    return paths


# --------------------------------------------------------------------------- tick


def due_sweeps(res: Resources, now: float) -> tuple[list[SweepRecord], list[str]]:
    """Return the active sweeps due for service now, and problems with the others' schedules.

    A sweep's last service time is kept in Redis; an empty Redis makes every
    sweep due, which rebuilds the outstanding work from the databases.
    """
    due: list[SweepRecord] = []
    problems: list[str] = []
    for rec in res.state.list_sweeps():
        if rec.status != "active":
            continue
        if not rec.server:
            problems.append(f"{rec.name} v{rec.version}: no server recorded")
            continue
        try:
            spec = SweepSpec.model_validate(rec.spec)
            every = parse_schedule(spec.submit.schedule, res.worker.default_every)
        except (ConfigError, ValueError) as exc:
            problems.append(f"{rec.name} v{rec.version}: {exc}")
            continue
        key = res.key("last", rec.id)
        raw = res.redis.get(key)
        last = float(raw) if raw is not None else None
        if every.is_due(last, now):
            res.redis.set(key, repr(now), ex=int(max(every.next_after(now) - now, 1) * 4) + 3600)
            due.append(rec)
    return due, problems


def tick(res: Resources, enqueue: Callable[[str, str, tuple[Any, ...]], bool]) -> dict[str, Any]:
    """Queue the work due now: one top-up per (server, app), one poll and harvest per sweep.

    ``enqueue(kind, key, args)`` queues a task unless one of the same kind and
    key is still pending, and says whether it did.
    """
    now = time.time()
    # A second beat, or a tick redelivered late, finds the marker and does nothing.
    if not res.redis.set(
        res.key("tick"), repr(now), nx=True, px=int(res.worker.tick_interval * 500)
    ):
        return {"skipped": True}
    due, problems = due_sweeps(res, now)
    for problem in problems:
        log.warning("tick: %s", problem)
    queued: dict[str, int] = {"top_up": 0, "poll": 0, "harvest": 0}
    for server_name, app in sorted({(rec.server, rec.app) for rec in due}):
        queued["top_up"] += enqueue("top_up", f"{server_name}:{app}", (server_name, app))
    for rec in due:
        key = f"{rec.name}:{rec.version}"
        queued["poll"] += enqueue("poll", key, (rec.name, rec.version))
        queued["harvest"] += enqueue("harvest", key, (rec.name, rec.version))
    return {
        "skipped": False,
        "due": [f"{r.name} v{r.version}" for r in due],
        "queued": queued,
        "problems": problems,
    }
