"""The result store: Parquet part files per sweep, written exactly once through a ledger.

Layout under the store root (a local folder or any URL pyarrow's filesystems
understand, e.g. ``s3://bucket/prefix``)::

    <root>/<sweep>/version=<v>/part-<time>-<token>.parquet   committed rows
    <root>/_staging/<sweep>/part-<time>-<token>.parquet      being written

DuckDB and polars read ``<root>/<sweep>/*/*.parquet`` without this project;
:meth:`ResultStore.read` reads exactly the parts the ledger lists.

The exactly-once protocol (tables ``bp_ledger`` and ``bp_parts`` in the state
database):

1. **Claim.** A harvester inserts one ledger row per result it means to ingest,
   keyed by result name, with ``live = 1``, its id, a random token and a lease.
   ``UNIQUE(sweep_id, point_id, live)`` lets only one live row exist per point,
   so a second result of the same point (a retry that raced, a duplicate) cannot
   be claimed: it is recorded as ``superseded`` instead.
2. **Stage.** The rows are written to a part file under ``_staging/``, which no
   reader looks at.
3. **Commit.** One transaction moves the harvester's claims (matched by token,
   so a claim that recovery released cannot be committed) to ``committed`` with
   the part's name, and records the part as ``committed``. If any claim is gone,
   the transaction is rolled back and the staged file removed.
4. **Publish.** The part is renamed into place and recorded as ``live``.

:meth:`ResultStore.recover` may run at any time, in any process: committed
parts still in staging are published; claims whose lease expired are deleted
(their points can be claimed again) and staged files whose token holds no
unexpired claim and no committed part are removed. A harvester that renews its
lease is never touched. Results that cannot be ingested (a rejected archive, a
missing file) are recorded with ``live`` NULL, so a later attempt of the same
point can still be ingested.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from pipeline.errors import HarvestError, StateError
from pipeline.state import StateDB, SweepRecord, insert_ignore, ledger, parts, sweeps

__all__ = ["Candidate", "Claim", "RecoveryReport", "ResultStore"]

STAGING = "_staging"
#: How many result names go into one ``IN (...)`` list of a commit.
COMMIT_IN_CHUNK = 500
#: A part's row groups gather pieces until they hold this many rows, or bytes.
ROW_GROUP_ROWS = 32 * 1024
ROW_GROUP_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    """A result the harvester found and would like to ingest."""

    result_name: str
    point_id: str
    attempt: int


@dataclass
class Claim:
    """The results one harvester holds for one sweep, and the token that fences them."""

    sweep: SweepRecord
    token: str
    results: dict[str, Candidate] = field(default_factory=dict)
    superseded: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True)
class RecoveryReport:
    """What one recovery pass did."""

    published: int
    released: int
    removed_staged: int


def _one(tables: list[Any]) -> Any:
    """Return the tables (of one schema) as one, without copying."""
    import pyarrow as pa

    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _harvester_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class ResultStore:
    """Parquet parts per sweep under ``root``, committed through the state database's ledger."""

    def __init__(
        self,
        state: StateDB,
        root: str,
        *,
        harvester: str | None = None,
        lease_seconds: float = 300.0,
    ) -> None:
        import pyarrow.fs as pafs

        self.state = state
        self.root_uri = root
        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.harvester = harvester or _harvester_id()
        self.lease_seconds = lease_seconds

    # -- paths ----------------------------------------------------------------

    def _final_path(self, sweep: str, version: int, part: str) -> str:
        return f"{self.root}/{sweep}/version={version}/{part}"

    def _staged_path(self, sweep: str, part: str) -> str:
        return f"{self.root}/{STAGING}/{sweep}/{part}"

    # -- claims ---------------------------------------------------------------

    def claim(self, sweep: SweepRecord, candidates: Iterable[Candidate]) -> Claim:
        """Claim results for ingestion; results whose point already has a live row are superseded.

        Rows already recorded for a result (ingested, quarantined, superseded) are
        left as they are and the result is not claimed again.
        """
        token = secrets.token_hex(8)
        claim = Claim(sweep=sweep, token=token)
        wanted = list(candidates)
        if not wanted:
            return claim
        now = time.time()
        rows = [
            {
                "result_name": c.result_name,
                "sweep_id": sweep.id,
                "point_id": c.point_id,
                "attempt": c.attempt,
                "live": 1,
                "state": "claimed",
                "harvester": self.harvester,
                "token": token,
                "lease_until": now + self.lease_seconds,
                "updated_at": now,
            }
            for c in wanted
        ]
        with self.state.engine.begin() as conn:
            known = {
                r.result_name
                for r in conn.execute(
                    sa.select(ledger.c.result_name).where(
                        ledger.c.result_name.in_([c.result_name for c in wanted])
                    )
                )
            }
            # One statement: rows that collide with a known result or with a point's
            # live row are skipped by the engine, atomically.
            conn.execute(insert_ignore(ledger, self.state.dialect), rows)
            ours = {
                r.result_name
                for r in conn.execute(
                    sa.select(ledger.c.result_name).where(ledger.c.token == token)
                )
            }
        for cand in wanted:
            if cand.result_name in ours:
                claim.results[cand.result_name] = cand
            elif cand.result_name not in known:
                claim.superseded.append(cand)
        self._record_superseded(sweep, claim.superseded, token)
        return claim

    def _record_superseded(
        self, sweep: SweepRecord, items: Sequence[Candidate], token: str
    ) -> None:
        if not items:
            return
        now = time.time()
        with self.state.engine.begin() as conn:
            conn.execute(
                insert_ignore(ledger, self.state.dialect),
                [
                    {
                        "result_name": c.result_name,
                        "sweep_id": sweep.id,
                        "point_id": c.point_id,
                        "attempt": c.attempt,
                        "live": None,
                        "state": "superseded",
                        "harvester": self.harvester,
                        "token": token,
                        "lease_until": now,
                        "reason": "another result of this point is already ingested or claimed",
                        "updated_at": now,
                    }
                    for c in items
                ],
            )

    def renew(self, claim: Claim) -> None:
        """Extend the lease of every result still claimed under ``claim``."""
        with self.state.engine.begin() as conn:
            conn.execute(
                ledger.update()
                .where(ledger.c.token == claim.token, ledger.c.state == "claimed")
                .values(lease_until=time.time() + self.lease_seconds)
            )

    def reject(
        self, claim: Claim, result_name: str, state: str, reason: str, content_hash: str | None
    ) -> None:
        """Record that a claimed result gives no rows (quarantined or lost), freeing its point."""
        if state not in ("quarantined", "lost"):
            raise ValueError(f"state must be 'quarantined' or 'lost', not {state!r}")
        with self.state.engine.begin() as conn:
            conn.execute(
                ledger.update()
                .where(ledger.c.result_name == result_name, ledger.c.token == claim.token)
                .values(
                    live=None,
                    state=state,
                    reason=reason,
                    content_hash=content_hash,
                    updated_at=time.time(),
                )
            )
        claim.results.pop(result_name, None)

    # -- commit ---------------------------------------------------------------

    def commit(
        self,
        claim: Claim,
        data: Any,
        content_hashes: dict[str, str] | None = None,
        *,
        results: Sequence[str] | None = None,
        amend: Callable[[], Callable[[Any], Any] | None] | None = None,
    ) -> str | None:
        """Write the rows of claimed results as one part, exactly once; return the part's name.

        ``data`` is a pyarrow Table, or an iterable of Tables / RecordBatches that
        is written as it comes (memory stays flat for a huge point); an exception
        it raises part-way removes what was staged and commits nothing.
        ``results`` names the claimed results the rows belong to (all of the
        claim's by default); ``content_hashes`` is read once ``data`` is
        exhausted, so an iterator may add a hash it learns at its end.
        ``amend``, when given, is called once ``data`` is exhausted; when it
        returns a function, the staged rows are read back one row group at a
        time, passed through it and written again before the commit (for
        columns known only after the rows: an archive's one-row outputs that
        come after its large table). Results with no rows at all are committed
        without a part, and None is returned. Raises HarvestError when a claim
        was lost (its lease expired and recovery released it); nothing is then
        written.
        """
        names = list(claim.results) if results is None else list(results)
        if not names:
            return None
        sweep = claim.sweep
        part: str | None = self._part_name(claim.token)
        staged = self._staged_path(sweep.name, str(part))
        try:
            rows = self._write_part(staged, data)
            transform = amend() if amend is not None else None
            if transform is not None and rows:
                first, part = staged, self._part_name(claim.token)
                staged = self._staged_path(sweep.name, part)
                try:
                    rows = self._rewrite_part(first, staged, transform)
                finally:
                    self._remove(first)
        except BaseException:
            self._remove(staged)
            raise
        size = self.fs.get_file_info(staged).size or 0 if rows else 0
        if not rows:
            self._remove(staged)
            part = None
        hashes = content_hashes if content_hashes is not None else {}
        now = time.time()
        try:
            with self.state.engine.begin() as conn:
                # A few statements per part, not one per result: the claims move to
                # committed by name list (rowcount is exact for a single UPDATE on
                # every engine), then the content hashes are set in one executemany.
                updated = 0
                for start in range(0, len(names), COMMIT_IN_CHUNK):
                    updated += conn.execute(
                        ledger.update()
                        .where(
                            ledger.c.result_name.in_(names[start : start + COMMIT_IN_CHUNK]),
                            ledger.c.token == claim.token,
                            ledger.c.state == "claimed",
                        )
                        .values(state="committed", part=part, updated_at=now)
                    ).rowcount
                if updated != len(names):
                    raise HarvestError(
                        f"{len(names) - updated} of {len(names)} claimed results were released "
                        "(lease expired) before the commit; nothing was written"
                    )
                with_hash = [
                    {"b_name": name, "b_hash": hashes[name]}
                    for name in names
                    if hashes.get(name) is not None
                ]
                if with_hash:
                    conn.execute(
                        ledger.update()
                        .where(
                            ledger.c.result_name == sa.bindparam("b_name"),
                            ledger.c.token == claim.token,
                        )
                        .values(content_hash=sa.bindparam("b_hash")),
                        with_hash,
                    )
                if part is not None:
                    conn.execute(
                        parts.insert().values(
                            name=part,
                            sweep_id=sweep.id,
                            version=sweep.version,
                            rows=rows,
                            bytes=size,
                            state="committed",
                            harvester=self.harvester,
                            created_at=now,
                        )
                    )
        except BaseException:
            self._remove(staged)
            raise
        for name in names:
            claim.results.pop(name, None)
        if part is not None:
            self._publish(sweep.name, sweep.version, part)
        return part

    @staticmethod
    def _part_name(token: str) -> str:
        return f"part-{time.time_ns():x}-{token}.parquet"

    def _rewrite_part(self, source: str, path: str, transform: Callable[[Any], Any]) -> int:
        """Write the rows of the part file ``source`` to ``path``, each row group transformed."""
        import pyarrow.parquet as pq

        with self.fs.open_input_file(source) as f:
            reader = pq.ParquetFile(f)
            groups = (transform(reader.read_row_group(i)) for i in range(reader.num_row_groups))
            return self._write_part(path, groups)

    def _write_part(self, path: str, data: Any) -> int:
        """Write a Table or an iterable of Tables/RecordBatches to ``path``; return the rows.

        Small pieces are gathered into row groups of at least :data:`ROW_GROUP_ROWS`
        rows (or :data:`ROW_GROUP_BYTES`): a row group per streamed batch would
        make the footer, which writers and readers hold whole, grow with the part.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pieces = [data] if isinstance(data, pa.Table | pa.RecordBatch) else data
        rows = 0
        writer: Any = None
        gathered: list[Any] = []
        gathered_rows = gathered_bytes = 0
        try:
            for piece in pieces:
                if writer is None:
                    schema = piece.schema
                    out = self.fs.open_output_stream(path)
                    writer = pq.ParquetWriter(out, schema, compression="zstd")
                elif piece.schema != schema:
                    try:
                        piece = piece.cast(schema)
                    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
                        raise HarvestError(
                            f"rows of one part disagree on their columns: {exc}"
                        ) from exc
                if isinstance(piece, pa.RecordBatch):
                    piece = pa.Table.from_batches([piece])
                gathered.append(piece)
                gathered_rows += piece.num_rows
                gathered_bytes += piece.get_total_buffer_size()
                rows += piece.num_rows
                if gathered_rows >= ROW_GROUP_ROWS or gathered_bytes >= ROW_GROUP_BYTES:
                    writer.write_table(_one(gathered))
                    gathered, gathered_rows, gathered_bytes = [], 0, 0
            if gathered:
                writer.write_table(_one(gathered))
        finally:
            if writer is not None:
                writer.close()
                out.close()
        return rows

    def _publish(self, sweep: str, version: int, part: str) -> None:
        final = self._final_path(sweep, version, part)
        staged = self._staged_path(sweep, part)
        if self._exists(staged):
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            self.fs.move(staged, final)
        if not self._exists(final):
            raise StateError(f"part {part} is committed but neither staged nor published")
        with self.state.engine.begin() as conn:
            conn.execute(
                parts.update()
                .where(parts.c.name == part, parts.c.state == "committed")
                .values(state="live")
            )

    def _exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(path).type == pafs.FileType.File)

    def _remove(self, path: str) -> None:
        if self._exists(path):
            self.fs.delete_file(path)

    # -- recovery -------------------------------------------------------------

    def recover(self) -> RecoveryReport:
        """Finish or undo what crashed harvesters left; safe to run at any time, anywhere."""
        import pyarrow.fs as pafs

        now = time.time()
        with self.state.engine.connect() as conn:
            committed = conn.execute(
                sa.select(parts.c.name, parts.c.version, sweeps.c.name)
                .join(sweeps, sweeps.c.id == parts.c.sweep_id)
                .where(parts.c.state == "committed")
            ).all()
        published = 0
        for part, version, sweep in committed:
            self._publish(sweep, version, part)
            published += 1
        with self.state.engine.begin() as conn:
            released = conn.execute(
                ledger.delete().where(ledger.c.state == "claimed", ledger.c.lease_until < now)
            ).rowcount
            held_tokens = {
                r.token
                for r in conn.execute(
                    sa.select(ledger.c.token)
                    .where(ledger.c.state == "claimed", ledger.c.lease_until >= now)
                    .distinct()
                )
            }
            known_parts = {r.name for r in conn.execute(sa.select(parts.c.name))}
        removed = 0
        selector = pafs.FileSelector(f"{self.root}/{STAGING}", recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            part = info.base_name
            token = part.rsplit("-", 1)[-1].removesuffix(".parquet")
            if part in known_parts or token in held_tokens:
                continue
            self.fs.delete_file(info.path)
            removed += 1
        return RecoveryReport(published=published, released=released, removed_staged=removed)

    # -- reading --------------------------------------------------------------

    def part_paths(self, sweep: str, version: int | None = None) -> list[str]:
        """Return the paths of the parts the ledger lists for a sweep (one version or all)."""
        query = (
            sa.select(parts.c.name, parts.c.version, parts.c.state)
            .join(sweeps, sweeps.c.id == parts.c.sweep_id)
            .where(sweeps.c.name == sweep, parts.c.state.in_(["live", "committed"]))
            .order_by(parts.c.name)
        )
        if version is not None:
            query = query.where(parts.c.version == version)
        with self.state.engine.connect() as conn:
            rows = conn.execute(query).all()
        paths = []
        for name, ver, state in rows:
            final = self._final_path(sweep, ver, name)
            if state == "committed" and not self._exists(final):
                final = self._staged_path(sweep, name)
            paths.append(final)
        return paths

    def read_table(
        self,
        sweep: str,
        *,
        version: int | None = None,
        columns: Sequence[str] | None = None,
        filters: Any = None,
    ) -> Any:
        """Read a sweep's rows as a pyarrow Table, with columns and filters pushed down."""
        import pyarrow as pa
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        paths = self.part_paths(sweep, version)
        if not paths:
            return pa.table({})
        missing = [p for p in paths if not self._exists(p)]
        if missing:
            raise HarvestError(
                f"the state database lists {len(paths)} part file(s) of sweep {sweep!r} but "
                f"{len(missing)} are not under the store root {self.root_uri!r} (e.g. "
                f"{missing[0]}): is --store / BOINC_PIPELINE_STORE the store these rows "
                "were harvested into?"
            )
        schemas = [pq.read_schema(p, filesystem=self.fs) for p in paths]
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
            raise HarvestError(
                f"the parts of sweep {sweep!r} disagree on a column type: {exc}"
            ) from exc
        dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=self.fs)
        expr = pq.filters_to_expression(filters) if filters is not None else None
        return dataset.to_table(columns=list(columns) if columns else None, filter=expr)

    def read(self, sweep: str, **kwargs: Any) -> Any:
        """Read a sweep's rows as a pandas DataFrame; see :meth:`read_table` for the options."""
        return self.read_table(sweep, **kwargs).to_pandas()

    # -- compaction -----------------------------------------------------------

    def compact(self, sweep: SweepRecord, *, min_parts: int = 2) -> str | None:
        """Merge a sweep version's live parts into one; the ledger swaps them in one transaction."""
        import pyarrow.parquet as pq

        with self.state.engine.connect() as conn:
            old = [
                r.name
                for r in conn.execute(
                    sa.select(parts.c.name).where(
                        parts.c.sweep_id == sweep.id,
                        parts.c.version == sweep.version,
                        parts.c.state == "live",
                    )
                )
            ]
        if len(old) < min_parts:
            return None
        table = self.read_table(sweep.name, version=sweep.version)
        token = secrets.token_hex(8)
        part = f"part-{time.time_ns():x}-{token}.parquet"
        staged = self._staged_path(sweep.name, part)
        self.fs.create_dir(staged.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(staged) as out:
            pq.write_table(table, out, compression="zstd")
        try:
            with self.state.engine.begin() as conn:
                retired = conn.execute(
                    parts.update()
                    .where(parts.c.name.in_(old), parts.c.state == "live")
                    .values(state="retired")
                ).rowcount
                if retired != len(old):
                    raise StateError("the parts changed during compaction; nothing was swapped")
                conn.execute(
                    parts.insert().values(
                        name=part,
                        sweep_id=sweep.id,
                        version=sweep.version,
                        rows=table.num_rows,
                        bytes=self.fs.get_file_info(staged).size or 0,
                        state="committed",
                        harvester=self.harvester,
                        created_at=time.time(),
                    )
                )
                conn.execute(ledger.update().where(ledger.c.part.in_(old)).values(part=part))
        except BaseException:
            self._remove(staged)
            raise
        self._publish(sweep.name, sweep.version, part)
        for name in old:
            self._remove(self._final_path(sweep.name, sweep.version, name))
        return part
