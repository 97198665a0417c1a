"""Put a sweep's workunits on the BOINC server: chunks, verification, queue top-up, retry, cancel.

Every workunit goes through the same four steps, so that a submitter killed at
any moment and started again never creates a workunit twice and never loses one:

1. **reserve**: the attempts are written to the state database as intents;
2. **pre-check**: one query finds which of the chunk's names already exist on
   the server (a previous run got that far) and confirms them;
3. **create** the rest through the transport, in the sweep's mode:

   - ``script``: one ``bin/boinc2docker_create_work.py`` per workunit, the
     stock tool's command line (cannot carry per-job files or prerun/postrun);
   - ``batch``: one process per chunk, run by the server's own Python (2.7 on
     the stock apache image), that imports boinc2docker's
     ``boinc2docker_create_work`` function and calls it per workunit
     (``pipeline/drivers/batch_create.py``);

4. **verify**: one query confirms every name exists. boinc2docker exits 0 when
   a docker step fails, so its exit status is never trusted; a name still
   missing is a :class:`~pipeline.errors.SubmissionError` and its intent is
   dropped, returning the point to the queue.

Queue top-up follows BOINC's own work generators: count the app's unsent
results (``server_state <= 2``) plus the results the transitioner has yet to
create for new workunits; create only enough to refill the app's cushion; share
the shortfall between the app's sweeps by priority, then evenly.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pipeline.boincdb import BoincDB
from pipeline.errors import ConfigError, ServerError, SubmissionError
from pipeline.plan import PlannedWorkunit, canonical_json, plan, plan_point, sweep_name_prefix
from pipeline.spec import SweepSpec
from pipeline.state import StateDB, SweepRecord
from pipeline.track import SweepStatus, track_sweep
from pipeline.transport import Transport

__all__ = [
    "MODES",
    "ChunkReport",
    "SubmitContext",
    "TopUpReport",
    "cancel_sweep",
    "register_sweep",
    "retry_points",
    "submit_points",
    "top_up",
]

log = logging.getLogger(__name__)

MODES = ("script", "batch", "fast")
#: Point states a new attempt may be made for, automatically or by ``retry``.
RETRYABLE = ("failed", "lost", "bad_output")


@dataclass
class SubmitContext:
    """What submission needs: the state database, the server's transport and database."""

    state: StateDB
    transport: Transport
    boinc: BoincDB
    mode: str = "batch"
    python: str = "python"
    timeout: float = 3600.0
    on_progress: Callable[[int], None] | None = None


@dataclass
class ChunkReport:
    """What one chunk did: how many it created, found already there, and how long each step took."""

    created: int = 0
    existed: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def add(self, other: ChunkReport) -> None:
        """Accumulate another chunk's counts and timings into this one."""
        self.created += other.created
        self.existed += other.existed
        for step, seconds in other.timings.items():
            self.timings[step] = self.timings.get(step, 0.0) + seconds


# --------------------------------------------------------------------------- registration


def register_sweep(
    state: StateDB, boinc: BoincDB | None, spec: SweepSpec, *, server: str = ""
) -> SweepRecord:
    """Record the sweep and its points in the state database (idempotent).

    On the first registration, refuses to start when the server already holds
    workunits with the sweep's name prefix that this state database does not
    know: another user's sweep of the same name, or a lost state database.
    """
    record = state.register_sweep(
        name=spec.name,
        version=spec.version,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec.workunit_hash(),
        app=spec.app,
        server=server,
        priority=spec.job.priority,
    )
    if boinc is not None and not state.attempts_of(record.id):
        prefix = sweep_name_prefix(spec.name, spec.version)
        foreign = boinc.count_with_prefix(prefix)
        if foreign:
            raise ConfigError(
                f"the BOINC server already holds {foreign} workunit(s) named {prefix}*, which "
                f"the state database {state.url_safe} does not know: another user's sweep "
                "with this name, or a lost state database. Rename the sweep or raise its "
                "`version`, or point --state at the database that submitted them."
            )
    if record.n_points == 0:
        stream = plan(spec)
        total = state.add_points(
            record.id, ((wu.point_id, canonical_json(wu.params)) for wu in stream)
        )
        record = state.get_sweep(spec.name, spec.version)
        if stream.duplicates:
            state.log_event(
                "plan",
                f"{stream.duplicates} duplicate point(s) in the space were skipped",
                sweep_id=record.id,
                examples=stream.duplicate_examples,
            )
        state.log_event("register", f"{total} points planned", sweep_id=record.id)
    return record


# --------------------------------------------------------------------------- creation


def _check_mode(spec: SweepSpec, mode: str) -> None:
    from pipeline.plan import supported_modes

    if mode not in MODES:
        raise ConfigError(f"submission mode {mode!r} is not one of {', '.join(MODES)}")
    fits = supported_modes(spec)
    if mode not in fits:
        raise ConfigError(
            f"sweep {spec.name!r} uses per-job input files or prerun/postrun, which mode "
            f"{mode!r} cannot carry; use one of: {', '.join(sorted(fits))}"
        )


def _create_script(ctx: SubmitContext, wus: Sequence[PlannedWorkunit]) -> list[str]:
    """Run the stock boinc2docker script once per workunit; return what each printed."""
    outputs = []
    for wu in wus:
        res = ctx.transport.run(wu.argv, timeout=ctx.timeout, check=False)
        text = (res.stdout + res.stderr).decode("utf-8", "replace")
        outputs.append(f"{wu.wu_name}: exit {res.exit_code}: {text.strip()[-500:]}")
        if ctx.on_progress:
            ctx.on_progress(1)
    return outputs


def _batch_job(spec: SweepSpec, wu: PlannedWorkunit) -> dict[str, Any]:
    j = spec.job
    return {
        "wu_name": wu.wu_name,
        "image": spec.image,
        "command": wu.command,
        "appname": spec.app,
        "entrypoint": spec.entrypoint,
        "prerun": "\n".join(wu.prerun) or None,
        "postrun": "\n".join(wu.postrun) or None,
        "input_files": [
            [name, base64.b64encode(data).decode("ascii"), []] for name, data in wu.input_files
        ],
        "create_work_args": {
            "wu_name": wu.wu_name,
            "rsc_fpops_est": j.rsc_fpops_est,
            "rsc_fpops_bound": j.rsc_fpops_bound,
            "rsc_memory_bound": int(j.rsc_memory_bound),
            "rsc_disk_bound": int(j.rsc_disk_bound),
            "delay_bound": j.delay_bound,
            "priority": j.priority,
            "min_quorum": j.min_quorum,
            "target_nresults": j.target_nresults,
            "max_error_results": j.max_error_results,
            "max_total_results": j.max_total_results,
            "max_success_results": j.max_success_results,
        },
    }


def batch_driver_source() -> str:
    """Return the source of the server-side batch driver (Python 2.7 and 3)."""
    return (
        resources.files("pipeline.drivers").joinpath("batch_create.py").read_text(encoding="utf-8")
    )


def _create_batch(ctx: SubmitContext, spec: SweepSpec, wus: Sequence[PlannedWorkunit]) -> list[str]:
    """Create a chunk in one server process that calls boinc2docker's function per job."""
    feed = "".join(json.dumps(_batch_job(spec, wu)) + "\n" for wu in wus).encode("utf-8")
    res = ctx.transport.run(
        [ctx.python, "-c", batch_driver_source()], stdin=feed, timeout=ctx.timeout, check=False
    )
    outputs = []
    for line in res.stdout.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        outputs.append(f"{item.get('wu_name')}: {str(item.get('output', '')).strip()[-500:]}")
    if ctx.on_progress:
        ctx.on_progress(len(wus))
    if res.exit_code != 0:
        err = res.stderr.decode("utf-8", "replace").strip()
        outputs.append(f"batch driver exited {res.exit_code}: {err[-1000:]}")
    return outputs


def _engine_hint(outputs: Iterable[str]) -> str:
    text = "\n".join(outputs)
    if ("client version" in text and "too old" in text) or "API version" in text:
        return (
            " The server's Docker engine refuses the apache image's old Docker client "
            "(API 1.22): Docker Engine 25+ needs DOCKER_MIN_API_VERSION=1.22 in the "
            "engine's environment, and its `docker save` writes an OCI layout that "
            "boinc2docker cannot read (run `boinc-pipeline doctor`)."
        )
    return ""


def submit_points(
    ctx: SubmitContext,
    spec: SweepSpec,
    sweep: SweepRecord,
    wus: Sequence[PlannedWorkunit],
) -> ChunkReport:
    """Create one chunk of planned workunits exactly once (reserve, pre-check, create, verify)."""
    report = ChunkReport()
    if not wus:
        return report
    mode = ctx.mode
    _check_mode(spec, mode)
    t0 = time.perf_counter()
    ctx.state.reserve_attempts(sweep.id, [(wu.point_id, wu.attempt, wu.wu_name) for wu in wus])
    t1 = time.perf_counter()
    existing = ctx.boinc.existing_workunits(wu.wu_name for wu in wus)
    ctx.state.confirm_attempts(existing)
    todo = [wu for wu in wus if wu.wu_name not in existing]
    t2 = time.perf_counter()
    outputs: list[str] = []
    if todo:
        if mode == "fast":
            from pipeline.fast import create_fast

            outputs = create_fast(ctx, spec, todo)
        elif mode == "script":
            outputs = _create_script(ctx, todo)
        else:
            outputs = _create_batch(ctx, spec, todo)
    t3 = time.perf_counter()
    created = ctx.boinc.existing_workunits(wu.wu_name for wu in todo) if todo else {}
    ctx.state.confirm_attempts(created)
    t4 = time.perf_counter()
    report.existed = len(existing)
    report.created = len(created)
    report.timings = {"reserve": t1 - t0, "precheck": t2 - t1, "create": t3 - t2, "verify": t4 - t3}
    missing = [wu.wu_name for wu in todo if wu.wu_name not in created]
    if missing:
        log.error(
            "workunits were not created",
            extra={"sweep": sweep.name, "missing": len(missing), "example": missing[0]},
        )
        ctx.state.drop_attempts(sweep.id, missing)
        detail = "\n".join(o for o in outputs if any(m in o for m in missing[:3])) or "\n".join(
            outputs[-3:]
        )
        ctx.state.log_event(
            "submit_failed",
            f"{len(missing)} workunit(s) were not created",
            sweep_id=sweep.id,
            missing=missing[:20],
            output=detail[-2000:],
        )
        raise SubmissionError(
            f"{len(missing)} of {len(todo)} workunit(s) were not created on the server "
            f"(boinc2docker may exit 0 without creating anything), e.g. {missing[0]}. "
            f"Server output:\n{detail[-1500:]}{_engine_hint(outputs)}"
        )
    if report.created:
        ctx.state.log_event("submit", f"created {report.created} workunit(s)", sweep_id=sweep.id)
    log.info(
        "submitted a chunk",
        extra={
            "sweep": sweep.name,
            "version": sweep.version,
            "mode": mode,
            "workunits_created": report.created,
            "workunits_existed": report.existed,
            "seconds": round(t4 - t0, 3),
        },
    )
    return report


def resolve_pending(ctx: SubmitContext, spec: SweepSpec, sweep: SweepRecord) -> ChunkReport:
    """Finish what a killed submitter left: confirm or create every reserved attempt."""
    pending = ctx.state.pending_attempts(sweep.id)
    report = ChunkReport()
    if not pending:
        return report
    params = {pid: p for pid, _att, p in ctx.state.points_in_state(sweep.id, ["submitted"])}
    wus = [plan_point(spec, params[a.point_id], a.attempt) for a in pending if a.point_id in params]
    chunk = spec.submit.chunk_size
    for start in range(0, len(wus), chunk):
        report.add(submit_points(ctx, spec, sweep, wus[start : start + chunk]))
    return report


def next_workunits(
    state: StateDB, spec: SweepSpec, sweep: SweepRecord, limit: int
) -> list[PlannedWorkunit]:
    """Plan the next ``limit`` workunits of a sweep: new points first, then automatic retries.

    A point in a retryable state whose attempts reached ``max_attempts`` is marked
    ``exhausted`` instead.
    """
    if limit <= 0:
        return []
    out = [
        plan_point(spec, params, 1)
        for pid, _att, params in state.points_in_state(sweep.id, ["planned"], limit=limit)
    ]
    if len(out) < limit:
        out += _retry_workunits(state, spec, sweep, limit - len(out), spec.submit.max_attempts)
    return out


def _retry_workunits(
    state: StateDB,
    spec: SweepSpec,
    sweep: SweepRecord,
    limit: int,
    max_attempts: int,
    reason: str | None = None,
    states: Sequence[str] = RETRYABLE,
) -> list[PlannedWorkunit]:
    out: list[PlannedWorkunit] = []
    exhausted: list[tuple[str, str, str | None]] = []
    reasons = state.point_reasons(sweep.id, states)
    for pid, attempt, params in state.points_in_state(sweep.id, states):
        why = reasons.get(pid)
        if reason is not None and (why is None or reason not in why):
            continue
        if attempt >= max_attempts:
            exhausted.append((pid, "exhausted", why))
            continue
        if len(out) < limit:
            out.append(plan_point(spec, params, attempt + 1))
    if exhausted and tuple(states) == RETRYABLE:
        state.set_point_states(sweep.id, exhausted)
    return out


# --------------------------------------------------------------------------- top-up


@dataclass
class TopUpReport:
    """One top-up pass on one app: the queue it found and what it submitted per sweep."""

    app: str
    cushion: int
    queued_before: int
    submitted: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, SweepStatus] = field(default_factory=dict)
    report: ChunkReport = field(default_factory=ChunkReport)


def share_shortfall(
    shortfall: int, wants: Sequence[tuple[str, int, int]], chunk: int = 1
) -> dict[str, int]:
    """Split ``shortfall`` workunits between sweeps (name, priority, how many it can take).

    Higher priority is served first; sweeps of equal priority get equal shares
    (round robin, one workunit at a time), none more than it can take.
    """
    grant = {name: 0 for name, _prio, _cap in wants}
    left = shortfall
    for prio in sorted({p for _n, p, _c in wants}, reverse=True):
        group = [(n, c) for n, p, c in wants if p == prio and c > 0]
        while left > 0 and group:
            share = max(1, left // len(group))
            still = []
            for name, cap in group:
                take = min(share, cap - grant[name], left)
                grant[name] += take
                left -= take
                if grant[name] < cap:
                    still.append((name, cap))
                if left <= 0:
                    break
            group = still
    return grant


def top_up(
    ctx: SubmitContext,
    app: str,
    cushion: int,
    sweeps: Sequence[tuple[SweepSpec, SweepRecord]],
) -> TopUpReport:
    """Refill one app's queue up to ``cushion`` unsent results from its active sweeps."""
    appid = ctx.boinc.app_id(app)
    statuses = {rec.name: track_sweep(ctx.state, ctx.boinc, rec) for _spec, rec in sweeps}
    for spec, rec in sweeps:
        resolve_pending(ctx, spec, rec)
    queued = ctx.boinc.unsent_results(appid) + ctx.boinc.untransitioned(appid, int(time.time()))
    report = TopUpReport(app=app, cushion=cushion, queued_before=queued, statuses=statuses)
    shortfall_results = cushion - queued
    if shortfall_results <= 0:
        return report
    wants = []
    plans: dict[str, tuple[SweepSpec, SweepRecord, list[PlannedWorkunit]]] = {}
    for spec, rec in sweeps:
        per_wu = max(1, spec.job.target_nresults)
        room = math.ceil(shortfall_results / per_wu)
        if spec.submit.max_unsent is not None:
            own = statuses[rec.name].counts.get("queued", 0) * per_wu
            room = min(room, max(0, (spec.submit.max_unsent - own) // per_wu))
        wus = next_workunits(ctx.state, spec, rec, room)
        plans[rec.name] = (spec, rec, wus)
        wants.append((rec.name, rec.priority, len(wus)))
    # Shares are counted in results, then turned back into workunits per sweep.
    per_wu_of = {rec.name: max(1, spec.job.target_nresults) for spec, rec in sweeps}
    grants = share_shortfall(shortfall_results, [(n, p, c * per_wu_of[n]) for n, p, c in wants])
    for name, results in grants.items():
        spec, rec, wus = plans[name]
        take = wus[: math.ceil(results / per_wu_of[name])] if results else []
        chunk = spec.submit.chunk_size
        for start in range(0, len(take), chunk):
            report.report.add(submit_points(ctx, spec, rec, take[start : start + chunk]))
        report.submitted[name] = len(take)
    return report


# --------------------------------------------------------------------------- retry, cancel


def retry_points(
    ctx: SubmitContext,
    spec: SweepSpec,
    sweep: SweepRecord,
    *,
    reason: str | None = None,
    include_exhausted: bool = False,
    extra_attempts: int = 0,
) -> ChunkReport:
    """Submit a new attempt now for every failed, lost or bad-output point (optionally by reason).

    ``include_exhausted`` also retries points that used up ``max_attempts``,
    allowing ``extra_attempts`` more than the spec's limit for them.
    """
    track_sweep(ctx.state, ctx.boinc, sweep)
    states = [*RETRYABLE, "exhausted"] if include_exhausted else list(RETRYABLE)
    limit = spec.submit.max_attempts + extra_attempts
    wus = _retry_workunits(ctx.state, spec, sweep, 10**9, limit, reason, states)
    report = ChunkReport()
    chunk = spec.submit.chunk_size
    for start in range(0, len(wus), chunk):
        report.add(submit_points(ctx, spec, sweep, wus[start : start + chunk]))
    return report


def cancel_ranges(ids: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """Split sorted workunit ids into runs of consecutive ids (for ranges) and singletons.

    Every id inside a returned range is one of ``ids``, so cancelling the range
    touches nothing else, whatever other sweeps and users interleave.
    """
    ranges: list[tuple[int, int]] = []
    singles: list[int] = []
    if not ids:
        return ranges, singles
    ordered = sorted(set(ids))
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        if prev > start:
            ranges.append((start, prev))
        else:
            singles.append(start)
        if i is not None:
            start = prev = i
    return ranges, singles


def cancel_sweep(ctx: SubmitContext, sweep: SweepRecord) -> int:
    """Cancel a sweep's unfinished workunits with BOINC's ``bin/cancel_jobs``; return how many.

    Ranges of ids are used only where every id in the range is one of this
    sweep's unfinished workunits; other workunits are cancelled by name.
    Results already on volunteers' computers come back later and are ignored.
    """
    status = track_sweep(ctx.state, ctx.boinc, sweep)
    prefix = sweep_name_prefix(sweep.name, sweep.version)
    rows = ctx.boinc.workunit_classes(prefix)
    open_wus = {wu.id: wu.name for wu in rows if wu.state in ("queued", "running")}
    ranges, singles = cancel_ranges(list(open_wus))
    for low, high in ranges:
        ctx.transport.run(["bin/cancel_jobs", str(low), str(high)], timeout=ctx.timeout)
    for wu_id in singles:
        ctx.transport.run(["bin/cancel_jobs", "--name", open_wus[wu_id]], timeout=ctx.timeout)
    ctx.state.set_sweep_status(sweep.id, "cancelled")
    ctx.state.log_event(
        "cancel",
        f"cancelled {len(open_wus)} workunit(s) ({len(ranges)} range(s), {len(singles)} by name)",
        sweep_id=sweep.id,
        before=status.counts,
    )
    still = [
        wu.name
        for wu in ctx.boinc.workunit_classes(prefix)
        if wu.id in open_wus and wu.state not in ("cancelled", "done", "failed")
    ]
    if still:
        raise ServerError(f"{len(still)} workunit(s) were not cancelled, e.g. {still[0]}")
    planned = [
        (pid, "cancelled", "sweep cancelled")
        for pid, _a, _p in ctx.state.points_in_state(sweep.id, ["planned", *RETRYABLE])
    ]
    ctx.state.set_point_states(sweep.id, planned)
    track_sweep(ctx.state, ctx.boinc, sweep)
    return len(open_wus)
