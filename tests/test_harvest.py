"""Harvesting result archives from a results folder: one pass per archive, exactly once.

Everything is real: a SQLite state database as ``pipeline.submit`` leaves it, a
SQLite BOINC database as the assimilator leaves it, archives on disk read
through the ``local://`` transport, and Parquet parts in a store folder.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from archives import Entry, tgz

from pipeline import boinc
from pipeline import harvest as hv
from pipeline.config import DbConfig, ServerConfig
from pipeline.emulator.records import assimilated_success
from pipeline.errors import HarvestError
from pipeline.harvest import HarvestReport, harvest_sweep
from pipeline.plan import wu_name
from pipeline.server import Server
from pipeline.spec import SweepSpec
from pipeline.state import StateDB, ledger
from pipeline.store import ResultStore
from pipeline.submit import register_sweep

MiB = 1 << 20
APP = "boinc2docker"


def _spec(n: int, outputs: list[dict[str, Any]] | None = None) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "hv",
            "image": "test/harvest:latest",
            "command": ["run", "--x={x}"],
            "parameters": {"grid": {"x": list(range(n))}},
            "outputs": outputs
            or [{"file": "out.csv", "kind": "csv"}, {"file": "summary.json", "kind": "json"}],
        }
    )


class Site:
    """A sweep whose points are all done, with one result archive per point on disk."""

    def __init__(self, folder: Path, spec: SweepSpec, archive: Callable[[int], bytes]) -> None:
        self.folder = folder
        self.spec = spec
        self.state = StateDB(f"sqlite:///{folder / 'state.sqlite'}")
        self.sweep = register_sweep(self.state, None, spec)
        points = self.state.points_in_state(self.sweep.id, ["planned"])
        planned = [(pid, 1, wu_name(spec.name, spec.version, pid, 1)) for pid, _a, _p in points]
        self.state.reserve_attempts(self.sweep.id, planned)
        boinc_url = f"sqlite:///{folder / 'boinc.sqlite'}"
        engine = sa.create_engine(boinc_url)
        boinc.metadata.create_all(engine)
        now = int(time.time())
        day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
        results = folder / "results"
        day_folder = results / APP / day
        day_folder.mkdir(parents=True)
        self.x_of: dict[str, int] = {}
        wus, rows = [], []
        for i, (pid, _a, wu) in enumerate(planned, 1):
            x = int(points[i - 1][2]["x"])
            self.x_of[pid] = x
            wu_row, result_row = assimilated_success(i, wu, now, hostid=7)
            wus.append(wu_row)
            rows.append(result_row)
            (day_folder / f"{wu}_0_r{1000000 + i}_0.tgz").write_bytes(archive(x))
        with engine.begin() as conn:
            conn.execute(sa.insert(boinc.workunit), wus)
            conn.execute(sa.insert(boinc.result), rows)
        engine.dispose()
        self.state.confirm_attempts({wu: i for i, (_p, _a, wu) in enumerate(planned, 1)})
        self.config = ServerConfig(
            name="test",
            transport=f"local://{folder}",
            results=f"local://{results}",
            boinc_db=DbConfig(url=boinc_url),
        )
        self.store_root = folder / "store"
        self.store = ResultStore(self.state, str(self.store_root))

    def harvest(self, **kwargs: Any) -> HarvestReport:
        with Server(self.config) as server:
            return harvest_sweep(self.state, server, self.store, self.spec, self.sweep, **kwargs)

    def rows(self) -> pa.Table:
        return self.store.read_table(self.spec.name)

    def ledger(self) -> dict[int, tuple[str, str | None]]:
        """Return {x: (ledger state, reason)} for every result the ledger holds."""
        with self.state.engine.connect() as conn:
            got = conn.execute(sa.select(ledger.c.point_id, ledger.c.state, ledger.c.reason)).all()
        return {self.x_of[pid]: (state, reason) for pid, state, reason in got}

    def parquet_files(self) -> list[Path]:
        return sorted(self.store_root.rglob("*.parquet"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    made: list[Site] = []

    def make(n: int, archive: Callable[[int], bytes], **kw: Any) -> Site:
        s = Site(tmp_path, _spec(n, **kw), archive)
        made.append(s)
        return s

    yield make
    for s in made:
        s.state.close()


def _csv(x: int, rows: int) -> bytes:
    lines = ["step,a,label"] + [f"{i},{x + i * 0.5},s{i % 7}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _summary(x: int) -> bytes:
    return json.dumps({"chi2": x * 0.25, "converged": x % 2 == 0}).encode()


def _good(x: int, rows: int = 50) -> bytes:
    return tgz([Entry("out.csv", _csv(x, rows)), Entry("summary.json", _summary(x))])


def _late_bad(x: int, rows: int = 50) -> bytes:
    """A good CSV and JSON, then a member that spoils the archive."""
    return tgz(
        [
            Entry("out.csv", _csv(x, rows)),
            Entry("summary.json", _summary(x)),
            Entry("../escape.txt", b"x"),
        ]
    )


@pytest.fixture
def streamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Treat every archive as large: its CSV is streamed into a part of its own."""
    monkeypatch.setattr(hv, "STREAM_POINT_BYTES", 0)
    monkeypatch.setattr(hv, "STREAM_MEMBER_BYTES", 1000)
    monkeypatch.setattr(hv, "STREAM_BLOCK_BYTES", 4096)


def test_small_archives_are_ingested_once_with_parameters_and_metadata(
    site: Callable[..., Site],
) -> None:
    s = site(6, _good)
    report = s.harvest(chunk_size=4)
    assert (report.done, report.found, report.ingested, report.rows) == (6, 6, 6, 300)
    table = s.rows()
    assert table.num_rows == 300
    names = table.column_names
    assert names[:5] == ["step", "a", "label", "chi2", "converged"]
    assert names[5] == "p.x"
    assert names[6:] == list(hv.META_COLUMNS)
    assert set(table.column("hostid").to_pylist()) == {7}
    assert sorted(set(table.column("p.x").to_pylist())) == list(range(6))
    assert {state for state, _r in s.ledger().values()} == {"committed"}
    again = s.harvest()
    assert (again.done, again.ingested) == (0, 0)
    assert s.rows().num_rows == 300


def test_bad_member_late_in_a_small_archive_leaves_no_rows(site: Callable[..., Site]) -> None:
    s = site(5, lambda x: _late_bad(x) if x == 2 else _good(x))
    report = s.harvest()
    assert report.ingested == 4
    assert dict(report.bad_output) == {"path_traversal": 1}
    assert sorted(set(s.rows().column("p.x").to_pylist())) == [0, 1, 3, 4]
    state, reason = s.ledger()[2]
    assert state == "quarantined"
    assert reason is not None
    assert reason.startswith("path_traversal")
    assert s.state.points_in_state(s.sweep.id, ["bad_output"])[0][2] == {"x": 2}


@pytest.mark.usefixtures("streamed")
def test_streamed_archive_with_late_one_row_output_matches_the_in_memory_rows(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    s = site(3, lambda x: _good(x, rows=2000))
    report = s.harvest()
    assert (report.ingested, report.rows) == (3, 6000)
    streamed_rows = s.rows()
    assert len(s.parquet_files()) == 3  # a part per streamed point, none left staged
    assert not list((tmp_path / "store" / "_staging").rglob("*.parquet"))
    # The same archives harvested in memory give the same columns and values.
    hv.STREAM_POINT_BYTES, hv.STREAM_MEMBER_BYTES = 16 * MiB, 32 * MiB
    other = tmp_path / "in-memory"
    other.mkdir()
    m = Site(other, s.spec, lambda x: _good(x, rows=2000))
    try:
        m.harvest()
        in_memory = m.rows()
    finally:
        m.state.close()
    assert streamed_rows.column_names == in_memory.column_names
    varying = ("received_time", "harvested_at", "source_file")  # times and folders of each site
    keep = [c for c in in_memory.column_names if c not in varying]
    order = [("p.x", "ascending"), ("step", "ascending")]
    assert streamed_rows.select(keep).sort_by(order).equals(in_memory.select(keep).sort_by(order))


@pytest.mark.usefixtures("streamed")
def test_one_row_output_first_is_added_while_streaming(
    site: Callable[..., Site], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rewrite(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("the part was rewritten: the one-row columns came late")

    monkeypatch.setattr(ResultStore, "_rewrite_part", no_rewrite)
    s = site(
        2,
        lambda x: tgz([Entry("a.json", _summary(x)), Entry("out.csv", _csv(x, 3000))]),
        outputs=[{"file": "out.csv", "kind": "csv"}, {"file": "a.json", "kind": "json"}],
    )
    report = s.harvest()
    assert (report.ingested, report.rows) == (2, 6000)
    assert s.rows().column_names[:5] == ["step", "a", "label", "chi2", "converged"]


@pytest.mark.usefixtures("streamed")
def test_bad_member_late_in_a_streamed_archive_leaves_no_rows_or_parts(
    site: Callable[..., Site], tmp_path: Path
) -> None:
    s = site(3, lambda x: _late_bad(x, rows=5000) if x == 1 else _good(x, rows=5000))
    report = s.harvest()
    assert report.ingested == 2
    assert report.rows == 10_000
    assert dict(report.bad_output) == {"path_traversal": 1}
    assert sorted(set(s.rows().column("p.x").to_pylist())) == [0, 2]
    assert len(s.parquet_files()) == 2
    assert not list((tmp_path / "store" / "_staging").rglob("*.parquet"))
    assert s.ledger()[1][0] == "quarantined"


@pytest.mark.usefixtures("streamed")
def test_late_rule_problem_in_a_streamed_archive_quarantines_it(
    site: Callable[..., Site],
) -> None:
    two_rows = json.dumps([{"chi2": 1.0}, {"chi2": 2.0}]).encode()
    s = site(
        2,
        lambda x: (
            tgz([Entry("out.csv", _csv(x, 3000)), Entry("summary.json", two_rows)])
            if x == 0
            else _good(x, rows=3000)
        ),
    )
    report = s.harvest()
    assert report.ingested == 1
    assert dict(report.bad_output) == {"row_conflict": 1}
    assert set(s.rows().column("p.x").to_pylist()) == {1}
    state, reason = s.ledger()[0]
    assert state == "quarantined"
    assert reason is not None
    assert "out.csv (streamed)" in reason
    assert len(s.parquet_files()) == 1


def _incompressible_csv_archive(x: int, target: int) -> bytes:
    """A CSV of random hex of about ``target`` compressed bytes, then a JSON."""
    lines = [b"i,h"]
    size = 0
    i = 0
    while size < 2 * target:
        line = b"%d,%s" % (i, os.urandom(48).hex().encode())
        lines.append(line)
        size += len(line) + 1
        i += 1
    return tgz([Entry("out.csv", b"\n".join(lines) + b"\n"), Entry("summary.json", _summary(x))])


def _harvest_peak(folder: Path, archive: bytes) -> tuple[int, HarvestReport]:
    """Harvest one archive into a fresh site; return the peak of traced Python memory."""
    folder.mkdir()
    s = Site(folder, _spec(1), lambda _x: archive)
    try:
        gc.collect()
        tracemalloc.start()
        try:
            report = s.harvest()
            _, peak = tracemalloc.get_traced_memory()
            gc.collect()
        finally:
            tracemalloc.stop()
    finally:
        s.state.close()
    return peak, report


@pytest.mark.slow
@pytest.mark.usefixtures("streamed")
def test_streamed_archive_is_not_held_in_memory(tmp_path: Path) -> None:
    hv.STREAM_BLOCK_BYTES = 256 * 1024
    _harvest_peak(tmp_path / "warm-up", _good(0, rows=3000))  # first-use imports and caches
    small = _incompressible_csv_archive(0, 4 * MiB)
    large = _incompressible_csv_archive(0, 32 * MiB)
    small_peak, small_report = _harvest_peak(tmp_path / "small", small)
    large_peak, large_report = _harvest_peak(tmp_path / "large", large)
    assert (small_report.ingested, large_report.ingested) == (1, 1)
    assert large_report.rows > 7 * small_report.rows
    # Holding the archive's bytes would take at least its size (32 MiB) in Python
    # objects; streaming it takes a few read buffers whatever the archive's size
    # (measured 3 to 8 MiB for both, the spread being the collector's timing).
    assert large_peak < 12 * MiB, f"peak {large_peak / MiB:.1f} MiB"
    assert large_peak - small_peak < 8 * MiB, (small_peak, large_peak)


def _held(table: pa.Table, x: Any, **meta: Any) -> hv._Held:
    meta = {"sweep": "hv", "point_id": f"id{x}", "cpu_time": 1.5, **meta}
    return hv._Held([table], table.num_rows, {"x": x}, meta)


def _decorated_one_by_one(points: list[hv._Held]) -> pa.Table:
    return hv._concat([hv._decorate(t, p.params, p.meta) for p in points for t in p.tables])


@pytest.mark.parametrize(
    "points",
    [
        pytest.param(
            [_held(pa.table({"a": [1, 2]}), 1), _held(pa.table({"a": [3]}), 2)], id="plain"
        ),
        pytest.param(
            [
                _held(pa.table({"a": [1, 2]}), 1),
                _held(pa.table({"a": [0.5], "b": ["new"]}), 2.5),
                _held(pa.table({"a": pa.array([], pa.int64())}), "no rows"),
                _held(pa.table({"a": [4], "cpu_time": ["output"]}), None),
            ],
            id="widening-and-no-rows",
        ),
        pytest.param(
            [
                _held(pa.table({"_": pa.nulls(1)}).drop_columns(["_"]), 1),
                _held(pa.table({"_": pa.nulls(1)}).drop_columns(["_"]), 2),
            ],
            id="no-columns",
        ),
        pytest.param(
            [_held(pa.table({"a": [1]}), True), _held(pa.table({"a": [2]}), 7)],
            id="types-that-do-not-mix",
        ),
    ],
)
def test_a_part_assembled_at_once_equals_decorating_each_point(points: list[hv._Held]) -> None:
    try:
        expected = _decorated_one_by_one(points)
    except HarvestError:
        with pytest.raises(HarvestError, match="disagree on a column type"):
            hv._assemble_part(points)
        return
    got = hv._assemble_part(points)
    assert got.schema.equals(expected.schema), (got.schema, expected.schema)
    assert got.equals(expected)
