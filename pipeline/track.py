"""Where every point of a sweep stands: BOINC's view merged with the pipeline's own record.

The core is pure: :func:`classify` maps one workunit's BOINC columns to a state,
:func:`failure_reason` explains a failed one from its ``error_mask`` and its
results. :func:`track_sweep` is the thin edge that runs one query per sweep on
the BOINC database, updates the state database and returns the counts.

States, with the BOINC facts behind them (reference, sections 3 and 6):

- ``planned``: no workunit yet (pipeline record only);
- ``queued``: the workunit exists and none of its results is on a volunteer's
  computer (unsent, or the transitioner has not created them yet);
- ``running``: at least one result is IN_PROGRESS, or a canonical result waits
  for assimilation;
- ``done``: ``canonical_resultid > 0``, ``error_mask = 0``, ``assimilate_state = 2``;
- ``failed``: ``error_mask != 0`` other than cancellation; failed workunits are
  assimilated too, so ``assimilate_state = 2`` alone never means success;
- ``cancelled``: ``error_mask`` has bit 16 (wins over failed);
- ``purged``: the workunit is gone from BOINC's tables (``db_purge``) but the
  pipeline recorded it; its last known outcome stays in the state database;
- ``lost`` and ``bad_output``: set by harvesting (done, but no usable file).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pipeline.boinc import AssimilateState, ClientState, ErrorMask, Outcome, ServerState
from pipeline.boincdb import BoincDB, ResultRow, WorkunitClass, WorkunitRow
from pipeline.plan import sweep_name_prefix, wu_name
from pipeline.state import StateDB, SweepRecord, attempts, points

__all__ = ["STATUS_ORDER", "SweepStatus", "classify", "failure_reason", "track_sweep"]

STATUS_ORDER = (
    "planned",
    "queued",
    "running",
    "done",
    "harvested",
    "failed",
    "exhausted",
    "cancelled",
    "lost",
    "bad_output",
    "purged",
)


def classify(wu: WorkunitRow) -> str:
    """Return the state of one workunit from its BOINC columns and result counts."""
    if wu.error_mask & ErrorMask.CANCELLED:
        return "cancelled"
    if wu.error_mask:
        return "failed"
    if wu.canonical_resultid > 0:
        return "done" if wu.assimilate_state == AssimilateState.DONE else "running"
    if wu.n_in_progress > 0:
        return "running"
    return "queued"


def _describe_result(r: ResultRow) -> str:
    try:
        outcome = Outcome(r.outcome).name.lower()
    except ValueError:
        outcome = f"outcome {r.outcome}"
    if r.outcome == Outcome.CLIENT_ERROR:
        try:
            client = ClientState(r.client_state).name.lower()
        except ValueError:
            client = f"client_state {r.client_state}"
        return f"{outcome} ({client}, exit status {r.exit_status})"
    return outcome


def failure_reason(error_mask: int, results: Iterable[ResultRow]) -> str:
    """Explain a failed workunit: the error_mask bits by name, then what its results did."""
    bits = [flag.name.lower() for flag in ErrorMask if error_mask & flag and flag.name]
    finished = [r for r in results if r.server_state == ServerState.OVER]
    tally = Counter(_describe_result(r) for r in finished if r.outcome != Outcome.SUCCESS)
    detail = ", ".join(f"{n}x {what}" for what, n in tally.most_common())
    head = "+".join(bits) if bits else f"error_mask {error_mask}"
    return f"{head}: {detail}" if detail else head


@dataclass
class SweepStatus:
    """Counts of a sweep's points by state, and the reasons of the failures."""

    sweep: str
    version: int
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    checked_at: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepStatus:
        """Rebuild a status from :meth:`as_dict`'s output (zero counts are left out)."""
        return cls(
            sweep=data["sweep"],
            version=int(data["version"]),
            total=int(data["total"]),
            counts={k: int(v) for k, v in data["counts"].items() if v},
            failure_reasons={k: int(v) for k, v in data["failure_reasons"].items()},
            checked_at=float(data["checked_at"]),
        )

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict of the status."""
        return {
            "sweep": self.sweep,
            "version": self.version,
            "total": self.total,
            "counts": {k: self.counts.get(k, 0) for k in STATUS_ORDER},
            "failure_reasons": self.failure_reasons,
            "checked_at": self.checked_at,
        }


#: Point states that tracking never overwrites: harvesting's verdicts, and the end of retries.
_STICKY = ("harvested", "lost", "bad_output", "exhausted")
#: Workunit states that end an attempt: its outcome is recorded once.
_FINAL = ("done", "failed", "cancelled")


def track_sweep(state: StateDB, boinc: BoincDB, sweep: SweepRecord) -> SweepStatus:
    """Read a sweep's workunit states from BOINC in one query and update the state database.

    The server decides each workunit's state (:meth:`BoincDB.workunit_classes`,
    the rules of :func:`classify`); the results of a failed workunit are read
    only when its failure is new, to explain it (the reason is kept with the
    point and reused afterwards). The two reads, BOINC's and the state
    database's, run at the same time: both mostly wait for their servers.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        boinc_read = pool.submit(
            boinc.workunit_classes, sweep_name_prefix(sweep.name, sweep.version)
        )
        current = _current_attempts(state, sweep.id)
        rows = {wu.name: wu for wu in boinc_read.result()}

    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    point_updates: list[tuple[str, str, str | None]] = []
    finished: list[tuple[str, str, str | None]] = []
    newly_failed: list[tuple[str, str, WorkunitClass, bool]] = []
    for pid, attempt, known, recorded, submitted, open_outcome, known_reason in current:
        if attempt == 0:
            counts["planned"] += 1
            continue
        name = wu_name(sweep.name, sweep.version, pid, attempt)
        wu = rows.get(name)
        if known in _STICKY:
            counts[known] += 1
        elif wu is None:
            pending = recorded and not submitted
            counts["planned" if pending else "purged"] += 1
        else:
            status = wu.state
            counts[status] += 1
            closes = status in _FINAL and recorded and open_outcome
            if status == "failed":
                if known == "failed" and known_reason is not None and not closes:
                    reasons[known_reason] += 1
                else:
                    newly_failed.append((pid, name, wu, closes))
                continue
            target = status if status in _FINAL else "submitted"
            if target != known:
                point_updates.append((pid, target, None))
            if closes:
                finished.append((name, status, None))

    results_by_wu: dict[int, list[ResultRow]] = {}
    if newly_failed:
        for r in boinc.results_of([wu.id for _p, _n, wu, _c in newly_failed]):
            results_by_wu.setdefault(r.workunitid, []).append(r)
    for pid, name, wu, closes in newly_failed:
        reason = failure_reason(wu.error_mask, results_by_wu.get(wu.id, []))
        reasons[reason] += 1
        point_updates.append((pid, "failed", reason))
        if closes:
            finished.append((name, "failed", reason))

    state.set_point_states(sweep.id, point_updates, keep=_STICKY)
    state.finish_attempts(finished)
    return SweepStatus(
        sweep=sweep.name,
        version=sweep.version,
        total=len(current),
        counts=dict(counts),
        failure_reasons=dict(reasons),
        checked_at=time.time(),
    )


def _current_attempts(
    state: StateDB, sweep_id: int
) -> list[tuple[str, int, str, bool, bool, bool, str | None]]:
    """Return, per point, (point_id, attempt, state, recorded, submitted, outcome open, reason).

    One query joins each point to the record of its current attempt (by the
    index on ``(sweep_id, point_id)``): whether that record exists, whether the
    workunit was confirmed on the server, and whether its outcome is still
    unset. Older attempts are not read.
    """
    p, a = points, attempts
    query = (
        sa.select(
            p.c.point_id,
            p.c.attempt,
            p.c.state,
            a.c.wu_name.is_not(None),
            a.c.submitted_at.is_not(None),
            a.c.outcome.is_(None),
            p.c.reason,
        )
        .select_from(
            p.outerjoin(
                a,
                sa.and_(
                    a.c.sweep_id == p.c.sweep_id,
                    a.c.point_id == p.c.point_id,
                    a.c.attempt == p.c.attempt,
                ),
            )
        )
        .where(p.c.sweep_id == sweep_id)
    )
    with state.engine.connect() as conn:
        return [
            (pid, int(att), st, bool(rec), bool(sub), bool(open_), reason)
            for pid, att, st, rec, sub, open_, reason in conn.execute(query)
        ]
