"""Harvest: find finished workunits' result archives, stream them back, parse them, store rows.

One pass over a sweep:

1. recover what crashed harvesters left in the store (:meth:`ResultStore.recover`);
2. track the sweep, so the state database knows which points are ``done``;
3. read the canonical result of every done workunit from the BOINC database;
4. list the result files in one call: ``<results>/<app>/<date>/<prefix>*.tgz``
   for every date from the oldest canonical result's reception to today (the
   assimilator files an archive under its local date at assimilation, which
   no column records; a day of margin on each side covers time zones);
5. a done workunit whose file is not there is ``lost`` (the upstream
   ``/results`` permission bug) and can be retried;
6. per chunk: claim the results in the ledger, stream their archives in one
   tar stream through the transport, read each one safely
   (:mod:`pipeline.archive`), parse the declared outputs
   (:mod:`pipeline.parse`), add parameters and BOINC metadata, and commit
   the rows as one part (:mod:`pipeline.store`). A rejected archive is
   quarantined with its reason and its point becomes ``bad_output``; the
   harvest goes on with the rest.

Each row carries the parameters as ``p.<name>`` columns, the outputs, and the
metadata columns in :data:`META_COLUMNS`.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.archive import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    ResultArchive,
    iter_result_archives,
)
from pipeline.boinc import parse_result_file
from pipeline.boincdb import ResultRow
from pipeline.errors import (
    ArchiveRejected,
    ChunkStreamError,
    HarvestError,
    ParseError,
    RemoteFileError,
)
from pipeline.parse import OutputProblem, PointRows, assemble_stream
from pipeline.plan import parse_wu_name, sweep_name_prefix, wu_name
from pipeline.spec import SweepSpec
from pipeline.state import StateDB, SweepRecord
from pipeline.store import Candidate, Claim, ResultStore
from pipeline.track import track_sweep

__all__ = ["META_COLUMNS", "HarvestReport", "date_folders", "harvest_sweep"]

#: Metadata columns every row carries, besides ``p.<param>`` and the outputs.
META_COLUMNS = (
    "sweep",
    "version",
    "point_id",
    "attempt",
    "wu_name",
    "result_name",
    "hostid",
    "cpu_time",
    "elapsed_time",
    "received_time",
    "harvested_at",
    "source_file",
)


@dataclass
class HarvestReport:
    """What one harvest pass did."""

    done: int = 0
    found: int = 0
    ingested: int = 0
    rows: int = 0
    superseded: int = 0
    lost: int = 0
    bad_output: Counter[str] = field(default_factory=Counter)
    parts: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict of the report."""
        return {
            "done": self.done,
            "found": self.found,
            "ingested": self.ingested,
            "rows": self.rows,
            "superseded": self.superseded,
            "lost": self.lost,
            "bad_output": dict(self.bad_output),
            "parts": self.parts,
            "seconds": round(self.seconds, 3),
        }


def date_folders(received_times: Sequence[int], timezone: str, now: float) -> list[str]:
    """Return the ``YYYY-MM-DD`` folders that may hold archives received at these times.

    From the day before the oldest reception (time zones) to the day after ``now``.
    """
    if not received_times:
        return []
    tz = ZoneInfo(timezone)
    known = [t for t in received_times if t > 0]
    oldest = min(known) if known else now
    first = dt.datetime.fromtimestamp(oldest, tz).date() - dt.timedelta(days=1)
    last = dt.datetime.fromtimestamp(now, tz).date() + dt.timedelta(days=1)
    return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class _Done:
    point_id: str
    attempt: int
    params: dict[str, Any]
    wu_name: str
    result: ResultRow


def _metadata(sweep: SweepRecord, item: _Done, source: str, harvested_at: float) -> dict[str, Any]:
    r = item.result
    return {
        "sweep": sweep.name,
        "version": sweep.version,
        "point_id": item.point_id,
        "attempt": item.attempt,
        "wu_name": item.wu_name,
        "result_name": r.name,
        "hostid": r.hostid,
        "cpu_time": r.cpu_time,
        "elapsed_time": r.elapsed_time,
        "received_time": r.received_time,
        "harvested_at": harvested_at,
        "source_file": source,
    }


def _decorate(batch: Any, params: Mapping[str, Any], meta: Mapping[str, Any]) -> Any:
    """Add parameter and metadata columns (constant per point) to a batch of output rows."""
    import pyarrow as pa

    n = batch.num_rows
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    # pa.repeat infers the type of one value, as pa.array([value] * n) would, without
    # building an n-element list; with no rows the empty list keeps the null type.
    constant = (lambda v: pa.repeat(v, n)) if n else (lambda v: pa.array([]))
    names = set(table.column_names)
    _check_collisions(names, params)
    for name, value in params.items():
        table = table.append_column(f"p.{name}", constant(value))
    for name, value in meta.items():
        if name in names:
            table = table.drop_columns([name])
        table = table.append_column(name, constant(value))
    return table


def harvest_sweep(
    state: StateDB,
    server: Any,
    store: ResultStore,
    spec: SweepSpec,
    sweep: SweepRecord,
    *,
    chunk_size: int = 200,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    timezone: str = "UTC",
    remove_ingested: bool = False,
    now: float | None = None,
) -> HarvestReport:
    """Ingest the results of every done, not yet harvested point of a sweep (one pass)."""
    started = time.perf_counter()
    report = HarvestReport()
    store.recover()
    track_sweep(state, server.boinc, sweep)
    done = _done_points(state, server.boinc, sweep)
    report.done = len(done)
    if not done:
        report.seconds = time.perf_counter() - started
        return report
    now = time.time() if now is None else now
    files = _find_files(server, spec, sweep, list(done.values()), timezone, now)
    report.found = len(files)
    lost = [item for name, item in done.items() if name not in files]
    if lost:
        _mark_lost(state, sweep, lost, server.results_dir, spec.app)
        report.lost = len(lost)
    found = [done[name] for name in files]
    for start in range(0, len(found), chunk_size):
        chunk = found[start : start + chunk_size]
        _harvest_chunk(state, server, store, spec, sweep, chunk, files, limits, report)
    if remove_ingested:
        harvested = {pid for pid, _a, _p in state.points_in_state(sweep.id, ["harvested"])}
        ingested = [files[d.result.name] for d in found if d.point_id in harvested]
        if ingested:
            server.results_transport.remove_files(ingested)
    report.seconds = time.perf_counter() - started
    return report


def _done_points(state: StateDB, boinc: Any, sweep: SweepRecord) -> dict[str, _Done]:
    """Return {result name: point} for every done point, with its canonical result."""
    points = state.points_in_state(sweep.id, ["done"])
    if not points:
        return {}
    by_wu = {wu_name(sweep.name, sweep.version, pid, att): (pid, att, p) for pid, att, p in points}
    rows = {
        wu.name: wu
        for wu in boinc.workunit_states(sweep_name_prefix(sweep.name, sweep.version))
        if wu.name in by_wu
    }
    canonical = {wu.canonical_resultid for wu in rows.values() if wu.canonical_resultid > 0}
    results = {
        r.id: r for r in boinc.results_of([wu.id for wu in rows.values()]) if r.id in canonical
    }
    out: dict[str, _Done] = {}
    for name, wu in rows.items():
        result = results.get(wu.canonical_resultid)
        if result is None:
            continue
        pid, att, params = by_wu[name]
        out[result.name] = _Done(pid, att, params, name, result)
    return out


def done_results(
    state: StateDB, boinc: Any, sweep: SweepRecord, result_names: Iterable[str]
) -> dict[str, _Done]:
    """Return {result name: point} for the given results only (what a harvest chunk needs).

    A result counts when it is its workunit's canonical result, the workunit is
    the current attempt of one of this sweep version's points, and that point
    is ``done`` in the state database. Two lookups by name and by point id: a
    chunk of a large sweep reads only its own rows.
    """
    wanted: dict[str, tuple[str, int]] = {}  # result name -> (point id, attempt)
    canonical = boinc.canonical_results(result_names)
    for result_name, (wu, _row) in canonical.items():
        try:
            parsed = parse_wu_name(wu)
        except ValueError:
            continue
        if (parsed.sweep, parsed.version) == (sweep.name, sweep.version):
            wanted[result_name] = (parsed.point_id, parsed.attempt)
    found = state.points_by_id(sweep.id, (pid for pid, _a in wanted.values()), ["done"])
    params = {(pid, att): p for pid, att, p in found}
    out: dict[str, _Done] = {}
    for result_name, key in wanted.items():
        if key in params:
            wu, row = canonical[result_name]
            out[result_name] = _Done(key[0], key[1], params[key], wu, row)
    return out


def _find_files(
    server: Any,
    spec: SweepSpec,
    sweep: SweepRecord,
    done: list[_Done],
    timezone: str,
    now: float,
) -> dict[str, str]:
    """List the result files of done points in one call; return {result name: path}."""
    folders = date_folders([d.result.received_time for d in done], timezone, now)
    prefix = sweep_name_prefix(sweep.name, sweep.version)
    app_dir = posixpath.join(server.results_dir, spec.app)
    try:
        listing = server.results_transport.list_files(
            app_dir, [f"{day}/{prefix}*.tgz" for day in folders]
        )
    except RemoteFileError:
        return {}  # no results folder for the app yet: nothing assimilated
    wanted = {d.result.name for d in done}
    found: dict[str, str] = {}
    for entry in listing:
        parsed = parse_result_file(posixpath.basename(entry.path))
        if parsed is not None and parsed.result_name in wanted:
            found.setdefault(parsed.result_name, entry.path)
    return found


def _mark_lost(
    state: StateDB, sweep: SweepRecord, lost: list[_Done], results_dir: str, app: str
) -> None:
    reason = (
        f"done, but no result file under {results_dir}/{app}/ (the assimilator could not "
        "write it: the upstream /results permission bug, or the file was removed)"
    )
    state.set_point_states(sweep.id, [(d.point_id, "lost", reason) for d in lost])
    state.finish_attempts([(d.wu_name, "lost", reason) for d in lost])
    state.log_event("lost", f"{len(lost)} done point(s) have no result file", sweep_id=sweep.id)


#: Archives larger than this (compressed) are committed as a part of their own, streamed.
STREAM_POINT_BYTES = 16 * 1024 * 1024
#: csv/tsv/jsonl members larger than this (uncompressed) are parsed as streams.
STREAM_MEMBER_BYTES = 32 * 1024 * 1024
#: Block size for streaming a large csv/tsv/jsonl output. Each block becomes one
#: batch; larger blocks parse a little faster but the batches, and the row groups
#: the store gathers from them, grow too (bench/harvest.py, 32 MiB archive: 8.0 s
#: and 234 MB peak RSS at 256 KiB, 6.9 s and 257 MB at 1 MiB, 6.3 s and 279 MB at
#: 4 MiB). The store gathers small batches into row groups, so small blocks cost
#: no more parts.
STREAM_BLOCK_BYTES = 256 * 1024


def _harvest_chunk(
    state: StateDB,
    server: Any,
    store: ResultStore,
    spec: SweepSpec,
    sweep: SweepRecord,
    chunk: list[_Done],
    files: dict[str, str],
    limits: ArchiveLimits,
    report: HarvestReport,
) -> None:
    """Claim, stream, parse and commit one chunk of results."""
    by_result = {d.result.name: d for d in chunk}
    claim = store.claim(sweep, [Candidate(d.result.name, d.point_id, d.attempt) for d in chunk])
    report.superseded += len(claim.superseded)
    if not claim.results:
        return
    paths = {files[name]: name for name in claim.results}
    batch = _ChunkRows(store, claim, report)
    bad: dict[str, tuple[str, str | None]] = {}
    harvested_at = time.time()
    try:
        with server.results_transport.open_tar_stream(list(paths), missing_ok=True) as stream:
            for archive in iter_result_archives(stream, limits):
                name = paths.get("/" + archive.path.lstrip("/"))
                if name is None:
                    continue
                item = by_result[name]
                meta = _metadata(sweep, item, files[name], harvested_at)
                try:
                    point = assemble_stream(
                        list(spec.outputs),
                        archive.members(),
                        stream_above=STREAM_MEMBER_BYTES,
                        block_size=STREAM_BLOCK_BYTES,
                    )
                    rows = _PointPieces(point, archive, item.params, meta, batch)
                    if archive.size > STREAM_POINT_BYTES:
                        batch.commit_alone(name, rows)
                    else:
                        tables = rows.outputs()
                        batch.add(name, tables, rows.digest, item.params, meta)
                except _Spoiled as exc:
                    problems = exc.problems
                    bad[name] = ("; ".join(f"{p.output}: {p}" for p in problems), exc.digest)
                    report.bad_output[problems[0].code] += 1
                except ArchiveRejected as exc:
                    bad[name] = (f"{exc.reason}: {exc}", None)
                    report.bad_output[exc.reason] += 1
                except ParseError as exc:
                    bad[name] = (f"parse_error: {exc}", None)
                    report.bad_output["parse_error"] += 1
                batch.renew_if_due()
    except ChunkStreamError as exc:
        raise HarvestError(f"the result stream broke off: {exc}") from exc
    batch.flush()
    vanished = [n for n in claim.results if n not in bad]
    for name in vanished:
        why = "result file vanished before it could be read"
        store.reject(claim, name, "lost", why, None)
        state.set_point_states(sweep.id, [(by_result[name].point_id, "lost", why)])
        report.lost += 1
    for name, (reason, bad_digest) in bad.items():
        store.reject(claim, name, "quarantined", reason, bad_digest)
    if bad:
        state.set_point_states(
            sweep.id, [(by_result[n].point_id, "bad_output", r) for n, (r, _d) in bad.items()]
        )
        state.finish_attempts(
            [(by_result[n].wu_name, "bad_output", r) for n, (r, _d) in bad.items()]
        )
    if batch.ingested:
        state.set_point_states(
            sweep.id, [(by_result[n].point_id, "harvested", None) for n in batch.ingested]
        )
        state.log_event("harvest", f"ingested {len(batch.ingested)} result(s)", sweep_id=sweep.id)


class _Spoiled(HarvestError):
    """A point's outputs break the combination rules (missing, row_conflict, ...)."""

    def __init__(self, problems: list[OutputProblem], digest: str) -> None:
        self.problems = problems
        self.digest = digest
        super().__init__("; ".join(str(p) for p in problems))


class _PointPieces:
    """The rows of one point with its parameters and metadata, read in one pass over its archive.

    Iterating gives the decorated pieces as the archive is read (a streamed
    output's rows before the archive has been read whole); at the end it
    raises :class:`_Spoiled` when the outputs break the rules, and sets
    :attr:`digest`. Pieces given before the point's late one-row outputs were
    read lack their columns: :meth:`amend` says how to complete them.
    """

    def __init__(
        self,
        point: PointRows,
        archive: ResultArchive,
        params: Mapping[str, Any],
        meta: Mapping[str, Any],
        chunk: _ChunkRows,
    ) -> None:
        self.point = point
        self.archive = archive
        self.params = params
        self.meta = meta
        self.chunk = chunk
        self.digest = ""

    def _read(self) -> Iterator[Any]:
        point = self.point
        for piece in point.batches:
            yield piece
            self.chunk.renew_if_due()
        self.digest = self.archive.sha256
        if point.problems:
            raise _Spoiled(point.problems, self.digest)

    def __iter__(self) -> Iterator[Any]:
        for piece in self._read():
            yield piece if self.point.incomplete else _decorate(piece, self.params, self.meta)

    def complete(self, piece: Any) -> Any:
        """Return a piece given before the late one-row outputs, completed and decorated."""
        return _decorate(self.point.finish(piece), self.params, self.meta)

    def amend(self) -> Callable[[Any], Any] | None:
        """After the iteration: the function completing the pieces given, if they need one."""
        return self.complete if self.point.incomplete else None

    def outputs(self) -> list[Any]:
        """Read the whole point; return its output rows as Tables, without the constant columns."""
        import pyarrow as pa

        pieces = list(self._read())
        if self.point.incomplete:
            pieces = [self.point.finish(p) for p in pieces]
        return [p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in pieces]


@dataclass(frozen=True)
class _Held:
    """One point's output rows waiting for the next part, with its constant columns."""

    tables: list[Any]
    rows: int
    params: Mapping[str, Any]
    meta: Mapping[str, Any]


class _ChunkRows:
    """The rows of one chunk's good results, committed in parts of bounded size."""

    #: Commit the accumulated rows once they hold this many bytes.
    FLUSH_BYTES = 64 * 1024 * 1024
    #: Renew the claim's lease this often while a chunk is being read.
    RENEW_SECONDS = 30.0

    def __init__(self, store: ResultStore, claim: Claim, report: HarvestReport) -> None:
        self.store = store
        self.claim = claim
        self.report = report
        self.points: list[_Held] = []
        self.names: list[str] = []
        self.hashes: dict[str, str] = {}
        self.size = 0
        self.ingested: list[str] = []
        self.renewed = time.monotonic()

    def add(
        self,
        name: str,
        tables: list[Any],
        digest: str,
        params: Mapping[str, Any],
        meta: Mapping[str, Any],
    ) -> None:
        """Keep a point's output rows for the next part; commit when enough have gathered.

        The parameter and metadata columns are added when the part is assembled.
        """
        for table in tables:
            _check_collisions(table.column_names, params)
        rows = sum(t.num_rows for t in tables)
        self.points.append(_Held(tables, rows, params, meta))
        self.names.append(name)
        self.hashes[name] = digest
        self.size += sum(t.get_total_buffer_size() for t in tables)
        self.size += rows * _constant_bytes(params, meta)
        if self.size >= self.FLUSH_BYTES:
            self.flush()

    def commit_alone(self, name: str, rows: _PointPieces) -> None:
        """Stream one large point's rows into a part of its own as its archive is read."""
        hashes: dict[str, str] = {}

        def pieces() -> Iterator[Any]:
            yield from rows
            hashes[name] = rows.digest  # read by commit once the pieces are exhausted

        counted = _Counter()
        part = self.store.commit(
            self.claim, counted.count(pieces()), hashes, results=[name], amend=rows.amend
        )
        if part:
            self.report.parts.append(part)
        self.report.rows += counted.rows if part else 0
        self.ingested.append(name)
        self.report.ingested += 1

    def flush(self) -> None:
        """Commit the gathered points as one part."""
        if not self.names:
            return
        rows = sum(p.rows for p in self.points)
        table = _assemble_part(self.points)
        data = iter(()) if table is None else iter([table])
        part = self.store.commit(self.claim, data, self.hashes, results=self.names)
        if part:
            self.report.parts.append(part)
        self.report.rows += rows
        self.report.ingested += len(self.names)
        self.ingested += self.names
        self.points, self.names, self.hashes, self.size = [], [], {}, 0

    def renew_if_due(self) -> None:
        """Extend the claim's lease when the chunk takes long."""
        if time.monotonic() - self.renewed > self.RENEW_SECONDS:
            self.store.renew(self.claim)
            self.renewed = time.monotonic()


class _Counter:
    """Counts the rows of the pieces passing through :meth:`count`."""

    def __init__(self) -> None:
        self.rows = 0

    def count(self, pieces: Iterator[Any]) -> Iterator[Any]:
        for piece in pieces:
            self.rows += piece.num_rows
            yield piece


def _concat(tables: list[Any]) -> Any:
    """Merge the chunk's tables into one (widening to the union of their columns)."""
    import pyarrow as pa

    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise HarvestError(f"points of one chunk disagree on a column type: {exc}") from exc


def _constant_bytes(params: Mapping[str, Any], meta: Mapping[str, Any]) -> int:
    """Roughly how many bytes the parameter and metadata columns take per row."""
    return sum(len(v) + 4 if isinstance(v, str) else 8 for v in (*params.values(), *meta.values()))


def _assemble_part(points: list[_Held]) -> Any:
    """Return the points' rows as one table, with their parameter and metadata columns.

    The result is that of decorating every table with :func:`_decorate` and
    concatenating them, but each constant column is built once for the part
    (one array of per-point values, repeated by ``take``) instead of once per
    point. When the values of a column do not make one array in one go (types
    that only a per-point widening reconciles, or none does), it falls back
    to decorating each table.
    """
    import numpy as np
    import pyarrow as pa

    tables = [t for p in points for t in p.tables]
    if not tables:
        return None
    order: dict[str, None] = {}  # the column order the concatenation would give
    values: dict[str, list[Any]] = {}
    for i, point in enumerate(points):
        constants = {f"p.{k}": v for k, v in point.params.items()} | dict(point.meta)
        for table in point.tables:
            for name in table.column_names:
                if name not in point.meta:
                    order.setdefault(name)
            for name in constants:
                order.setdefault(name)
        if point.rows:  # a point without rows adds no value (a null-typed column)
            for name, value in constants.items():
                values.setdefault(name, [None] * len(points))[i] = value
    counts = np.fromiter((p.rows for p in points), dtype=np.int64, count=len(points))
    try:
        outputs = pa.concat_tables(tables, promote_options="permissive")
        if outputs.num_rows != int(counts.sum()):
            raise ValueError("tables without columns lost their rows")
        index = pa.array(np.repeat(np.arange(len(points)), counts))
        columns = []
        for name in order:
            if name in values:
                columns.append(pa.array(values[name]).take(index))
            elif name in outputs.column_names and not any(name in p.meta for p in points):
                columns.append(outputs.column(name))
            else:
                columns.append(pa.nulls(outputs.num_rows))  # constants of points without rows
        return pa.table(columns, names=list(order))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return _concat([_decorate(t, p.params, p.meta) for p in points for t in p.tables])


def _check_collisions(columns: Iterable[str], params: Mapping[str, Any]) -> None:
    names = set(columns)
    for name in params:
        if f"p.{name}" in names:
            raise HarvestError(f"output column 'p.{name}' collides with parameter {name!r}")
