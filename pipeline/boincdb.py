"""Read (never write) a BOINC project's MySQL database: the edge that tracking stands on.

Every query selects a sweep's workunits by name prefix (``name LIKE 'prefix%'``
with ``_`` and ``%`` escaped), which MariaDB answers from the unique index on
``workunit.name``; BOINC has no index on ``workunit.batch``, so the pipeline
never filters on it. Results are reached through the index on
``result.workunitid``. The unsent-result count that queue top-up needs uses the
``(appid, server_state)`` index, as BOINC's own work generators do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pipeline.boinc import AssimilateState, ErrorMask, ServerState, app, result, workunit
from pipeline.errors import ConnectError, ServerError

__all__ = [
    "WORKUNIT_CLASSES",
    "BoincDB",
    "ResultRow",
    "WorkunitClass",
    "WorkunitRow",
    "like_prefix",
]

#: How many names go into one ``IN (...)`` list.
IN_CHUNK = 1000


def like_prefix(prefix: str) -> str:
    r"""Return a LIKE pattern matching names that start with ``prefix`` (``\`` escapes)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


@dataclass(frozen=True)
class WorkunitRow:
    """What tracking needs of one workunit, with counts of its results by server state."""

    id: int
    name: str
    canonical_resultid: int
    error_mask: int
    assimilate_state: int
    n_unsent: int
    n_in_progress: int
    n_over: int


#: The states :meth:`BoincDB.workunit_classes` computes in SQL, by their codes (0, 1, ...).
WORKUNIT_CLASSES = ("queued", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class WorkunitClass:
    """One workunit's state as the database computed it: its id, name, error_mask and state."""

    id: int
    name: str
    error_mask: int
    state: str


@dataclass(frozen=True)
class ResultRow:
    """One result of a workunit, as the per-point detail and harvesting need it."""

    id: int
    name: str
    workunitid: int
    server_state: int
    outcome: int
    client_state: int
    validate_state: int
    exit_status: int
    hostid: int
    cpu_time: float
    elapsed_time: float
    received_time: int
    sent_time: int


_RESULT_COLUMNS = tuple(
    result.c[name]
    for name in (
        "id",
        "name",
        "workunitid",
        "server_state",
        "outcome",
        "client_state",
        "validate_state",
        "exit_status",
        "hostid",
        "cpu_time",
        "elapsed_time",
        "received_time",
        "sent_time",
    )
)


def _result_row(r: Any) -> ResultRow:
    return ResultRow(
        id=int(r.id),
        name=r.name,
        workunitid=int(r.workunitid),
        server_state=int(r.server_state),
        outcome=int(r.outcome),
        client_state=int(r.client_state),
        validate_state=int(r.validate_state),
        exit_status=int(r.exit_status),
        hostid=int(r.hostid),
        cpu_time=float(r.cpu_time),
        elapsed_time=float(r.elapsed_time),
        received_time=int(r.received_time),
        sent_time=int(r.sent_time),
    )


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BoincDB:
    """A read-only view of one BOINC project database."""

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.engine = engine or sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> BoincDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, query: Any, params: dict[str, Any] | None = None) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query, params or {}))
        except sa.exc.OperationalError as exc:
            raise ConnectError(f"BOINC database unreachable: {exc.orig}") from exc

    # -- workunits ------------------------------------------------------------

    def workunit_states_query(self) -> sa.Select[Any]:
        """Every (workunit, result) pair of a sweep, for :meth:`workunit_states` (bind ``pattern``).

        It returns one row per (workunit, result) pair, and one row with a NULL
        ``server_state`` for a workunit without results; :meth:`workunit_states`
        sums them per workunit. There is no GROUP BY: MariaDB would copy every
        row into a temporary table and sort it, while this plan just walks the
        name index and, per workunit, the index on ``result.workunitid``.
        """
        r = result.alias("r")
        return (
            sa.select(
                workunit.c.id,
                workunit.c.name,
                workunit.c.canonical_resultid,
                workunit.c.error_mask,
                workunit.c.assimilate_state,
                r.c.server_state,
            )
            .select_from(workunit.outerjoin(r, r.c.workunitid == workunit.c.id))
            .where(workunit.c.name.like(sa.bindparam("pattern"), escape="\\"))
        )

    def workunit_classes_query(self) -> sa.Select[Any]:
        """The query that tracking runs per sweep: each workunit's state, decided by the server.

        The ``CASE`` applies :func:`pipeline.track.classify`'s rules in the same
        order, so one narrow row per workunit crosses the wire: the state as a
        small code (an index into :data:`WORKUNIT_CLASSES`) beside the id, the
        name and ``error_mask`` (which the failure reason needs). Results are
        read only for a workunit with no error and no canonical result, through
        ``EXISTS`` on the index on ``result.workunitid``; the workunits come from
        the name index (bind parameter ``pattern``).
        """
        w = workunit
        r = result.alias("r")
        code = {name: i for i, name in enumerate(WORKUNIT_CLASSES)}
        in_progress = (
            sa.exists()
            .where(r.c.workunitid == w.c.id, r.c.server_state == int(ServerState.IN_PROGRESS))
            .correlate(w)
        )
        state = sa.case(
            (w.c.error_mask.op("&")(int(ErrorMask.CANCELLED)) != 0, code["cancelled"]),
            (w.c.error_mask != 0, code["failed"]),
            (
                w.c.canonical_resultid > 0,
                sa.case(
                    (w.c.assimilate_state == int(AssimilateState.DONE), code["done"]),
                    else_=code["running"],
                ),
            ),
            (in_progress, code["running"]),
            else_=code["queued"],
        )
        return sa.select(w.c.id, w.c.name, w.c.error_mask, state.label("state")).where(
            w.c.name.like(sa.bindparam("pattern"), escape="\\")
        )

    def workunit_classes(self, prefix: str) -> list[WorkunitClass]:
        """Return the state of every workunit whose name starts with ``prefix``, in one query."""
        names = WORKUNIT_CLASSES
        return [
            WorkunitClass(int(wu_id), name, int(mask), names[int(code)])
            for wu_id, name, mask, code in self._run(
                self.workunit_classes_query(), {"pattern": like_prefix(prefix)}
            )
        ]

    def workunit_states(self, prefix: str) -> list[WorkunitRow]:
        """Return every workunit whose name starts with ``prefix``, in one query."""
        unsent, in_progress, over = (
            int(ServerState.UNSENT),
            int(ServerState.IN_PROGRESS),
            int(ServerState.OVER),
        )
        # id -> [name, canonical_resultid, error_mask, assimilate_state, unsent, in progress, over]
        found: dict[int, list[Any]] = {}
        for wu_id, name, canonical, error_mask, assimilate, state in self._run(
            self.workunit_states_query(), {"pattern": like_prefix(prefix)}
        ):
            entry = found.get(wu_id)
            if entry is None:
                entry = found[wu_id] = [name, canonical, error_mask, assimilate, 0, 0, 0]
            if state is None:
                continue
            if state <= unsent:
                entry[4] += 1
            elif state == in_progress:
                entry[5] += 1
            elif state == over:
                entry[6] += 1
        return [
            WorkunitRow(int(wu_id), e[0], int(e[1]), int(e[2]), int(e[3]), e[4], e[5], e[6])
            for wu_id, e in found.items()
        ]

    def existing_workunits(self, names: Iterable[str]) -> dict[str, int]:
        """Return {name: id} for the given names that exist as workunits."""
        wanted = list(names)
        found: dict[str, int] = {}
        for chunk in _chunks(wanted):
            for row in self._run(
                sa.select(workunit.c.name, workunit.c.id).where(workunit.c.name.in_(chunk))
            ):
                found[row.name] = int(row.id)
        return found

    def count_with_prefix(self, prefix: str) -> int:
        """Return how many workunits have names starting with ``prefix``."""
        rows = self._run(
            sa.select(sa.func.count()).where(workunit.c.name.like(like_prefix(prefix), escape="\\"))
        )
        return int(rows[0][0])

    def ids_with_prefix(self, prefix: str) -> list[tuple[int, str]]:
        """Return (id, name) of every workunit with the prefix, ordered by id."""
        rows = self._run(
            sa.select(workunit.c.id, workunit.c.name)
            .where(workunit.c.name.like(like_prefix(prefix), escape="\\"))
            .order_by(workunit.c.id)
        )
        return [(int(r.id), r.name) for r in rows]

    def ids_between(self, low: int, high: int) -> list[tuple[int, str]]:
        """Return (id, name) of every workunit with ``low <= id <= high`` (the primary key)."""
        rows = self._run(
            sa.select(workunit.c.id, workunit.c.name)
            .where(workunit.c.id.between(low, high))
            .order_by(workunit.c.id)
        )
        return [(int(r.id), r.name) for r in rows]

    # -- results --------------------------------------------------------------

    def results_of(self, workunit_ids: Iterable[int]) -> list[ResultRow]:
        """Return every result of the given workunits (index on ``result.workunitid``)."""
        ids = list(workunit_ids)
        out: list[ResultRow] = []
        for chunk in _chunks(ids):
            rows = self._run(
                sa.select(*_RESULT_COLUMNS)
                .where(result.c.workunitid.in_(chunk))
                .order_by(result.c.id)
            )
            out += map(_result_row, rows)
        return out

    def canonical_results(self, names: Iterable[str]) -> dict[str, tuple[str, ResultRow]]:
        """Return {result name: (workunit name, result)} for those of ``names`` that are canonical.

        A result counts only while it is its workunit's ``canonical_resultid``;
        results are found by their unique name index.
        """
        wanted = sorted(set(names))
        out: dict[str, tuple[str, ResultRow]] = {}
        for chunk in _chunks(wanted):
            rows = self._run(
                sa.select(*_RESULT_COLUMNS, workunit.c.name.label("wu_name"))
                .select_from(result.join(workunit, workunit.c.id == result.c.workunitid))
                .where(result.c.name.in_(chunk), workunit.c.canonical_resultid == result.c.id)
            )
            for row in rows:
                out[row.name] = (row.wu_name, _result_row(row))
        return out

    # -- apps and the queue ---------------------------------------------------

    def app_id(self, name: str) -> int:
        """Return the id of the app called ``name``; a missing app is a ServerError."""
        rows = self._run(sa.select(app.c.id).where(app.c.name == name))
        if not rows:
            raise ServerError(
                f"the BOINC project has no app named {name!r}; create it (bin/xadd or "
                "project.xml + bin/update_versions) or fix `app` in the spec"
            )
        return int(rows[0][0])

    def unsent_results(self, appid: int) -> int:
        """Count the app's results waiting to be sent (``server_state <= 2``)."""
        rows = self._run(
            sa.select(sa.func.count()).where(
                result.c.appid == appid, result.c.server_state <= int(ServerState.UNSENT)
            )
        )
        return int(rows[0][0])

    def untransitioned(self, appid: int, now: int) -> int:
        """Count the results the transitioner has yet to create for the app's new workunits.

        A new workunit is due for transition at once (``transition_time`` = its
        creation time) and has no results until the transitioner runs; each will
        add ``target_nresults`` unsent results, so top-up counts them as queued.
        The condition on ``transition_time`` uses BOINC's index on that column.
        """
        r = result.alias("r")
        rows = self._run(
            sa.select(sa.func.coalesce(sa.func.sum(workunit.c.target_nresults), 0)).where(
                workunit.c.appid == appid,
                workunit.c.transition_time <= now,
                ~sa.exists().where(r.c.workunitid == workunit.c.id),
            )
        )
        return int(rows[0][0])
