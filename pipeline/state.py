"""The pipeline's own state database: sweeps, points, attempts, events and the harvest ledger.

One SQLAlchemy URL picks the engine: a SQLite file by default (embedded, one
machine), MariaDB or PostgreSQL when several workers on several machines share
the work. The BOINC database says what the server knows *now*; this database is
the authoritative record of what the pipeline asked for and got, and it outlives
BOINC's ``db_purge``.

Tables (all prefixed ``bp_`` so they can share a database with other things):

- ``bp_schema``: one row, the schema version; :func:`migrate` brings any older
  database up to :data:`SCHEMA_VERSION` step by step and refuses a newer one.
- ``bp_sweeps``: one row per (name, version): the spec as submitted, the hash of
  its workunit-defining part, the server config name, priority and status.
- ``bp_points``: one row per (sweep, point_id): parameters, the current attempt
  number (0 before the first submission) and the pipeline's view of its state.
- ``bp_attempts``: one row per workunit the pipeline intends to create or has
  created. A row with ``submitted_at`` NULL is an *intent*: written before the
  server is asked, so a submitter killed at any moment leaves a record that the
  next run resolves against the BOINC database (created or not) — never a
  duplicate, never a loss.
- ``bp_events``: an append-only log (submissions, failures, task errors).
- ``bp_ledger`` and ``bp_parts``: the harvest ledger (schema version 2), see
  :mod:`pipeline.store` for the exactly-once protocol that uses them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.errors import ConfigError, StateError, StateUnavailable

__all__ = [
    "POINT_STATES",
    "SCHEMA_VERSION",
    "AttemptRecord",
    "StateDB",
    "SweepRecord",
    "insert_ignore",
    "migrate",
]

SCHEMA_VERSION = 2

#: How many values go into one ``IN (...)`` list (SQLite allows 32,766 bound values).
IN_LIST = 1000

#: Every state a point can be in, from the pipeline's point of view.
#: ``planned``: never submitted; ``submitted``: a workunit exists (or is being
#: created) for its current attempt; ``done``: BOINC finished it successfully;
#: ``failed``: its current attempt failed and it may be retried; ``exhausted``:
#: it failed ``max_attempts`` times; ``cancelled``; ``lost``: done but the result
#: file never appeared; ``bad_output``: the result archive was rejected;
#: ``harvested``: its rows are in the store.
POINT_STATES = (
    "planned",
    "submitted",
    "done",
    "failed",
    "exhausted",
    "cancelled",
    "lost",
    "bad_output",
    "harvested",
)

metadata = sa.MetaData()

schema_table = sa.Table(
    "bp_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer, nullable=False),
)

sweeps = sa.Table(
    "bp_sweeps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("spec_json", sa.Text, nullable=False),
    sa.Column("spec_hash", sa.String(64), nullable=False),
    sa.Column("server", sa.String(255), nullable=False, server_default=""),
    sa.Column("app", sa.String(254), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("n_points", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.UniqueConstraint("name", "version", name="uq_bp_sweeps_name_version"),
)

points = sa.Table(
    "bp_points",
    metadata,
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("bp_sweeps.id"), primary_key=True),
    sa.Column("point_id", sa.String(32), primary_key=True),
    sa.Column("params_json", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    sa.Column("state", sa.String(16), nullable=False, server_default="planned"),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Index("ix_bp_points_sweep_state", "sweep_id", "state"),
)

attempts = sa.Table(
    "bp_attempts",
    metadata,
    sa.Column("wu_name", sa.String(254), primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("bp_sweeps.id"), nullable=False),
    sa.Column("point_id", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("reserved_at", sa.Double, nullable=False),
    sa.Column("submitted_at", sa.Double, nullable=True),
    sa.Column("wu_id", sa.BigInteger, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("finished_at", sa.Double, nullable=True),
    sa.Index("ix_bp_attempts_point", "sweep_id", "point_id"),
    sa.Index("ix_bp_attempts_pending", "sweep_id", "submitted_at"),
)

events = sa.Table(
    "bp_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Double, nullable=False),
    sa.Column("sweep_id", sa.Integer, nullable=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data_json", sa.Text, nullable=True),
    sa.Index("ix_bp_events_sweep", "sweep_id", "id"),
)


ledger = sa.Table(
    "bp_ledger",
    metadata,
    sa.Column("result_name", sa.String(254), primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("bp_sweeps.id"), nullable=False),
    sa.Column("point_id", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    # 1 while the row claims or holds the point's one row set; NULL otherwise.
    # UNIQUE(sweep_id, point_id, live) lets each point hold one live row, since
    # every engine lets NULLs repeat in a unique index.
    sa.Column("live", sa.SmallInteger, nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("harvester", sa.String(64), nullable=False),
    sa.Column("token", sa.String(32), nullable=False),
    sa.Column("lease_until", sa.Double, nullable=False),
    sa.Column("part", sa.String(128), nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.UniqueConstraint("sweep_id", "point_id", "live", name="uq_bp_ledger_point_live"),
    sa.Index("ix_bp_ledger_state", "state", "lease_until"),
)

parts = sa.Table(
    "bp_parts",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("sweep_id", sa.Integer, sa.ForeignKey("bp_sweeps.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    # committed: recorded, maybe still in staging; live: in place; retired: compacted away
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("harvester", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Index("ix_bp_parts_sweep", "sweep_id", "state"),
)


def _migration_1(conn: Connection) -> None:
    """Create the first schema: sweeps, points, attempts, events."""
    for table in (sweeps, points, attempts, events):
        table.create(conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    """Add the harvest ledger: claimed/committed results and the store's part files."""
    for table in (ledger, parts):
        table.create(conn, checkfirst=True)


#: Ordered steps; step ``n`` turns a version ``n - 1`` database into version ``n``.
MIGRATIONS: dict[int, Any] = {1: _migration_1, 2: _migration_2}


def migrate(engine: Engine) -> int:
    """Bring the database up to :data:`SCHEMA_VERSION`, one step per transaction.

    Returns the version found before migrating (0 for an empty database).
    Refuses a database written by a newer boinc-pipeline.
    """
    with engine.begin() as conn:
        schema_table.create(conn, checkfirst=True)
        conn.execute(insert_ignore(schema_table, engine.dialect.name).values(id=1, version=0))
        found = int(conn.execute(sa.select(schema_table.c.version)).scalar_one())
    if found > SCHEMA_VERSION:
        raise StateError(
            f"state database schema version {found} is newer than this boinc-pipeline "
            f"understands ({SCHEMA_VERSION}); upgrade boinc-pipeline"
        )
    for step in range(found + 1, SCHEMA_VERSION + 1):
        with engine.begin() as conn:
            current = conn.execute(sa.select(schema_table.c.version).with_for_update()).scalar()
            if current is not None and current >= step:
                continue  # another process migrated meanwhile
            MIGRATIONS[step](conn)
            conn.execute(schema_table.update().values(version=step))
    return found


def insert_ignore(table: sa.Table, dialect: str) -> Any:
    """Return an INSERT for ``table`` that skips rows whose key already exists."""
    if dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return table.insert().prefix_with("IGNORE")
    raise StateError(f"unsupported state database engine {dialect!r}")


def _translate_errors(engine: Engine) -> Engine:
    """Turn connection failures into StateUnavailable, which callers may retry."""

    @sa.event.listens_for(engine, "handle_error")
    def _on_error(ctx: Any) -> None:
        exc = ctx.sqlalchemy_exception
        if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError) and (
            ctx.is_disconnect or ctx.connection is None or "connect" in str(exc.orig).lower()
        ):
            where = engine.url.render_as_string(hide_password=True)
            raise StateUnavailable(f"state database {where} unreachable: {exc.orig}") from exc

    return engine


def create_engine(url: str) -> Engine:
    """Create an engine with the settings each backend needs for concurrent workers."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return _translate_errors(sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600))


@dataclass(frozen=True)
class SweepRecord:
    """One submitted version of a sweep, as the state database holds it."""

    id: int
    name: str
    version: int
    spec_hash: str
    spec: dict[str, Any]
    server: str
    app: str
    priority: int
    status: str
    n_points: int
    created_at: float


@dataclass(frozen=True)
class AttemptRecord:
    """One workunit the pipeline asked for: a point's attempt."""

    wu_name: str
    point_id: str
    attempt: int
    submitted_at: float | None
    wu_id: int | None
    outcome: str | None
    reason: str | None


def _sweep_from_row(row: Any) -> SweepRecord:
    return SweepRecord(
        id=row.id,
        name=row.name,
        version=row.version,
        spec_hash=row.spec_hash,
        spec=json.loads(row.spec_json),
        server=row.server,
        app=row.app,
        priority=row.priority,
        status=row.status,
        n_points=row.n_points,
        created_at=row.created_at,
    )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class StateDB:
    """The pipeline's state database behind one URL; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine(url)
        try:
            migrate(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.dialect = self.engine.dialect.name

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sweeps ---------------------------------------------------------------

    def register_sweep(
        self,
        *,
        name: str,
        version: int,
        spec: dict[str, Any],
        spec_hash: str,
        app: str,
        server: str = "",
        priority: int = 0,
    ) -> SweepRecord:
        """Record a sweep version, or return the recorded one if its spec hash matches.

        A different workunit-defining spec under a version already recorded is
        refused: its workunits would not match the ones already on the server.
        """
        spec_json = json.dumps(spec, sort_keys=True)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(sweeps).where(sweeps.c.name == name, sweeps.c.version == version)
            ).first()
            if row is None:
                conn.execute(
                    insert_ignore(sweeps, self.dialect).values(
                        name=name,
                        version=version,
                        spec_json=spec_json,
                        spec_hash=spec_hash,
                        server=server,
                        app=app,
                        priority=priority,
                        created_at=time.time(),
                    )
                )
                row = conn.execute(
                    sa.select(sweeps).where(sweeps.c.name == name, sweeps.c.version == version)
                ).one()
            elif row.spec_hash == spec_hash:
                # Non-defining parts (submit settings, outputs) may change freely.
                conn.execute(
                    sweeps.update()
                    .where(sweeps.c.id == row.id)
                    .values(spec_json=spec_json, priority=priority, server=server or row.server)
                )
                row = conn.execute(sa.select(sweeps).where(sweeps.c.id == row.id)).one()
        if row.spec_hash != spec_hash:
            latest = self.latest_version(name) or version
            raise ConfigError(
                f"sweep {name!r} version {version} was already submitted with a different "
                f"workunit definition (image, command, parameters, job settings, inputs or "
                f"prerun/postrun changed); set `version: {latest + 1}` in the spec, "
                f"or pass --new-version"
            )
        return _sweep_from_row(row)

    def latest_version(self, name: str) -> int | None:
        """Return the highest recorded version of sweep ``name``, or None."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(sweeps.c.version)).where(sweeps.c.name == name)
            ).scalar()
        return int(value) if value is not None else None

    def get_sweep(self, name: str, version: int | None = None) -> SweepRecord:
        """Return a recorded sweep (its latest version unless ``version`` is given)."""
        if version is None:
            version = self.latest_version(name)
            if version is None:
                raise ConfigError(f"no sweep named {name!r} in the state database {self.url_safe}")
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(sweeps).where(sweeps.c.name == name, sweeps.c.version == version)
            ).first()
        if row is None:
            raise ConfigError(f"sweep {name!r} has no version {version} in the state database")
        return _sweep_from_row(row)

    def list_sweeps(self) -> list[SweepRecord]:
        """Return every recorded sweep version, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sweeps).order_by(sweeps.c.name, sweeps.c.version.desc())
            ).all()
        return [_sweep_from_row(r) for r in rows]

    def set_sweep_status(self, sweep_id: int, status: str) -> None:
        """Set a sweep's status (``active``, ``cancelled``, ``complete``)."""
        with self.engine.begin() as conn:
            conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(status=status))

    @property
    def url_safe(self) -> str:
        """The database URL with any password hidden, for messages and logs."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- points ---------------------------------------------------------------

    def add_points(
        self, sweep_id: int, items: Iterable[tuple[str, str]], *, chunk: int = 5000
    ) -> int:
        """Record (point_id, params JSON) pairs, skipping known ones; return the total."""
        now = time.time()
        stmt = insert_ignore(points, self.dialect)
        for batch in _chunks(items, chunk):
            rows = [
                {"sweep_id": sweep_id, "point_id": pid, "params_json": pj, "updated_at": now}
                for pid, pj in batch
            ]
            with self.engine.begin() as conn:
                conn.execute(stmt, rows)
        with self.engine.begin() as conn:
            total = int(
                conn.execute(
                    sa.select(sa.func.count()).where(points.c.sweep_id == sweep_id)
                ).scalar_one()
            )
            conn.execute(sweeps.update().where(sweeps.c.id == sweep_id).values(n_points=total))
        return total

    def point_counts(self, sweep_id: int) -> dict[str, int]:
        """Return how many points of the sweep are in each pipeline state."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(points.c.state, sa.func.count())
                .where(points.c.sweep_id == sweep_id)
                .group_by(points.c.state)
            ).all()
        return {state: int(n) for state, n in rows}

    def point_rows(self, sweep_id: int) -> list[tuple[str, int, str]]:
        """Return (point_id, current attempt, state) of every point of a sweep."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(points.c.point_id, points.c.attempt, points.c.state).where(
                    points.c.sweep_id == sweep_id
                )
            ).all()
        return [(pid, int(att), st) for pid, att, st in rows]

    def point_table(self, sweep_id: int) -> list[tuple[str, int, str, str | None, dict[str, Any]]]:
        """Return (point_id, attempt, state, reason, params) of every point, by point id."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    points.c.point_id,
                    points.c.attempt,
                    points.c.state,
                    points.c.reason,
                    points.c.params_json,
                )
                .where(points.c.sweep_id == sweep_id)
                .order_by(points.c.point_id)
            ).all()
        return [(p, int(a), s, r, json.loads(pj)) for p, a, s, r, pj in rows]

    def point_reasons(self, sweep_id: int, states: Sequence[str]) -> dict[str, str]:
        """Return {point_id: reason} for points in any of ``states`` that have a reason."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(points.c.point_id, points.c.reason).where(
                    points.c.sweep_id == sweep_id,
                    points.c.state.in_(list(states)),
                    points.c.reason.is_not(None),
                )
            ).all()
        return {pid: reason for pid, reason in rows}

    def points_in_state(
        self, sweep_id: int, states: Sequence[str], *, limit: int | None = None
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """Return (point_id, current attempt, params) of points in any of ``states``."""
        query = (
            sa.select(points.c.point_id, points.c.attempt, points.c.params_json)
            .where(points.c.sweep_id == sweep_id, points.c.state.in_(list(states)))
            .order_by(points.c.point_id)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [(pid, int(att), json.loads(pj)) for pid, att, pj in rows]

    def points_by_id(
        self, sweep_id: int, point_ids: Iterable[str], states: Sequence[str]
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """Return (point_id, current attempt, params) of the given points that are in ``states``."""
        wanted = sorted(set(point_ids))
        out: list[tuple[str, int, dict[str, Any]]] = []
        with self.engine.connect() as conn:
            for batch in _chunks(wanted, IN_LIST):
                rows = conn.execute(
                    sa.select(points.c.point_id, points.c.attempt, points.c.params_json).where(
                        points.c.sweep_id == sweep_id,
                        points.c.state.in_(list(states)),
                        points.c.point_id.in_(batch),
                    )
                ).all()
                out += [(pid, int(att), json.loads(pj)) for pid, att, pj in rows]
        return out

    def set_point_states(
        self,
        sweep_id: int,
        updates: Iterable[tuple[str, str, str | None]],
        *,
        keep: Sequence[str] = (),
    ) -> None:
        """Set (point_id, state, reason) for many points in one transaction.

        Points whose current state is in ``keep`` are left alone: the check and
        the write are one statement, so a verdict another process wrote in the
        meantime (say, ``harvested``) is never overwritten by a stale one.
        """
        rows = [
            {"b_point": pid, "b_state": state, "b_reason": reason, "b_now": time.time()}
            for pid, state, reason in updates
        ]
        if not rows:
            return
        cond = sa.and_(points.c.sweep_id == sweep_id, points.c.point_id == sa.bindparam("b_point"))
        for state in keep:  # plain comparisons: executemany cannot expand an IN list
            cond = sa.and_(cond, points.c.state != state)
        stmt = (
            points.update()
            .where(cond)
            .values(
                state=sa.bindparam("b_state"),
                reason=sa.bindparam("b_reason"),
                updated_at=sa.bindparam("b_now"),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    # -- attempts -------------------------------------------------------------

    def reserve_attempts(self, sweep_id: int, planned: Iterable[tuple[str, int, str]]) -> None:
        """Record the intent to create workunits (point_id, attempt, wu_name) before creating them.

        The points move to ``submitted`` with their new attempt number in the same
        transaction, so a crash between this and the server call leaves intents
        that :meth:`pending_attempts` returns for resolution.
        """
        now = time.time()
        batch = list(planned)
        if not batch:
            return
        with self.engine.begin() as conn:
            conn.execute(
                insert_ignore(attempts, self.dialect),
                [
                    {
                        "wu_name": wu,
                        "sweep_id": sweep_id,
                        "point_id": pid,
                        "attempt": att,
                        "reserved_at": now,
                    }
                    for pid, att, wu in batch
                ],
            )
            conn.execute(
                points.update()
                .where(
                    points.c.sweep_id == sweep_id,
                    points.c.point_id == sa.bindparam("b_point"),
                    points.c.attempt < sa.bindparam("b_attempt"),
                )
                .values(
                    attempt=sa.bindparam("b_attempt"),
                    state="submitted",
                    reason=None,
                    updated_at=now,
                ),
                [{"b_point": pid, "b_attempt": att} for pid, att, _ in batch],
            )

    def pending_attempts(self, sweep_id: int) -> list[AttemptRecord]:
        """Return the attempts reserved but not yet confirmed on the server."""
        return self._attempts(
            sa.and_(attempts.c.sweep_id == sweep_id, attempts.c.submitted_at.is_(None))
        )

    def attempts_of(self, sweep_id: int, point_id: str | None = None) -> list[AttemptRecord]:
        """Return every attempt of a sweep, or of one of its points."""
        cond = attempts.c.sweep_id == sweep_id
        if point_id is not None:
            cond = sa.and_(cond, attempts.c.point_id == point_id)
        return self._attempts(cond)

    def _attempts(self, cond: Any) -> list[AttemptRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(attempts).where(cond).order_by(attempts.c.point_id, attempts.c.attempt)
            ).all()
        return [
            AttemptRecord(
                wu_name=r.wu_name,
                point_id=r.point_id,
                attempt=r.attempt,
                submitted_at=r.submitted_at,
                wu_id=r.wu_id,
                outcome=r.outcome,
                reason=r.reason,
            )
            for r in rows
        ]

    def attempt_rows(self, sweep_id: int) -> list[dict[str, Any]]:
        """Return every attempt of a sweep as a dict of all its columns (for reports)."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(attempts)
                    .where(attempts.c.sweep_id == sweep_id)
                    .order_by(attempts.c.reserved_at)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def confirm_attempts(self, created: dict[str, int]) -> None:
        """Mark reserved attempts as existing on the server, with their BOINC workunit ids."""
        if not created:
            return
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                attempts.update()
                .where(attempts.c.wu_name == sa.bindparam("b_wu"))
                .values(submitted_at=now, wu_id=sa.bindparam("b_id")),
                [{"b_wu": wu, "b_id": wu_id} for wu, wu_id in created.items()],
            )

    def drop_attempts(self, sweep_id: int, wu_names: Iterable[str]) -> None:
        """Forget reserved attempts that were never created, returning their points to planned."""
        names = list(wu_names)
        if not names:
            return
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(attempts.c.point_id, attempts.c.attempt).where(
                    attempts.c.wu_name.in_(names), attempts.c.submitted_at.is_(None)
                )
            ).all()
            conn.execute(
                attempts.delete().where(
                    attempts.c.wu_name.in_(names), attempts.c.submitted_at.is_(None)
                )
            )
            for pid, att in rows:
                conn.execute(
                    points.update()
                    .where(
                        points.c.sweep_id == sweep_id,
                        points.c.point_id == pid,
                        points.c.attempt == att,
                    )
                    .values(
                        attempt=att - 1,
                        state="planned" if att == 1 else "failed",
                        updated_at=time.time(),
                    )
                )

    def finish_attempts(self, results: Iterable[tuple[str, str, str | None]]) -> None:
        """Record (wu_name, outcome, reason) for attempts that reached an end."""
        rows = [
            {"b_wu": wu, "b_outcome": outcome, "b_reason": reason, "b_now": time.time()}
            for wu, outcome, reason in results
        ]
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(
                attempts.update()
                .where(attempts.c.wu_name == sa.bindparam("b_wu"))
                .values(
                    outcome=sa.bindparam("b_outcome"),
                    reason=sa.bindparam("b_reason"),
                    finished_at=sa.bindparam("b_now"),
                ),
                rows,
            )

    # -- events ---------------------------------------------------------------

    def log_event(
        self, kind: str, message: str, *, sweep_id: int | None = None, **data: Any
    ) -> None:
        """Append an event to the log."""
        with self.engine.begin() as conn:
            conn.execute(
                events.insert().values(
                    at=time.time(),
                    sweep_id=sweep_id,
                    kind=kind,
                    message=message,
                    data_json=json.dumps(data, sort_keys=True, default=str) if data else None,
                )
            )

    def events_of(self, sweep_id: int | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Return the latest events, newest first."""
        query = sa.select(events).order_by(events.c.id.desc()).limit(limit)
        if sweep_id is not None:
            query = query.where(events.c.sweep_id == sweep_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            {
                "at": r.at,
                "kind": r.kind,
                "message": r.message,
                "data": json.loads(r.data_json) if r.data_json else {},
            }
            for r in rows
        ]
