"""The result store and its ledger: exactly-once commits, recovery, compaction, reading."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa

from pipeline.errors import HarvestError
from pipeline.state import StateDB, SweepRecord, ledger
from pipeline.store import Candidate, ResultStore


@pytest.fixture(params=["sqlite", "mariadb", "postgres"])
def state(request: pytest.FixtureRequest) -> Iterator[StateDB]:
    db = StateDB(str(request.getfixturevalue(f"{request.param}_url")))
    yield db
    db.close()


def _sweep(state: StateDB, name: str = "grid", version: int = 1) -> SweepRecord:
    return state.register_sweep(
        name=name, version=version, spec={}, spec_hash=f"h{version}", app="boinc2docker"
    )


def _cands(n: int, attempt: int = 1, start: int = 0) -> list[Candidate]:
    return [
        Candidate(f"grid_v1_{i:016x}_a{attempt}_0", f"{i:016x}", attempt)
        for i in range(start, start + n)
    ]


def _rows(cands: list[Candidate], per: int = 2) -> pa.Table:
    pids = [c.point_id for c in cands for _ in range(per)]
    return pa.table({"point_id": pids, "y": [float(i) for i in range(len(pids))]})


def test_commit_publishes_and_reads_exactly(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path / "store"))
    cands = _cands(5)
    claim = store.claim(sweep, cands)
    assert set(claim.results) == {c.result_name for c in cands}
    part = store.commit(claim, _rows(cands))
    assert part is not None
    assert (tmp_path / "store" / "grid" / "version=1" / part).is_file()
    assert not list((tmp_path / "store" / "_staging").rglob("*.parquet"))
    df = store.read("grid")
    assert len(df) == 10
    filtered = store.read("grid", columns=["y"], filters=[("y", ">=", 8.0)])
    assert list(filtered.columns) == ["y"]
    assert sorted(filtered["y"]) == [8.0, 9.0]


def test_second_result_of_a_point_is_superseded(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    first = store.claim(sweep, _cands(3))
    store.commit(first, _rows(_cands(3)))
    again = store.claim(sweep, _cands(3, attempt=2) + _cands(1, start=3))
    assert [c.point_id for c in again.superseded] == [f"{i:016x}" for i in range(3)]
    assert list(again.results) == [_cands(1, start=3)[0].result_name]
    # Claiming the same results again claims nothing and records nothing twice.
    assert not store.claim(sweep, _cands(3)).results


def test_rejected_result_frees_its_point(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    (bad,) = _cands(1)
    claim = store.claim(sweep, [bad])
    store.reject(claim, bad.result_name, "quarantined", "path_traversal", "abc")
    assert store.commit(claim, _rows([])) is None
    retry = store.claim(sweep, _cands(1, attempt=2))
    assert len(retry.results) == 1


def test_amend_completes_the_rows_once_they_are_all_written(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    cands = _cands(2)
    claim = store.claim(sweep, cands)
    rows = _rows(cands, per=3)
    hashes: dict[str, str] = {}
    seen: list[int] = []

    def pieces() -> Iterator[pa.RecordBatch]:
        yield from rows.to_batches(max_chunksize=2)
        hashes.update({c.result_name: "h" for c in cands})  # learned at the end

    def amend() -> Callable[[Any], Any]:
        seen.append(1)
        return lambda t: t.append_column("late", pa.repeat(1.5, t.num_rows))

    part = store.commit(claim, pieces(), hashes, amend=amend)
    assert part is not None
    assert seen == [1]
    assert [p.name for p in (tmp_path / "grid" / "version=1").glob("*.parquet")] == [part]
    assert not list((tmp_path / "_staging").rglob("*.parquet"))
    df = store.read("grid")
    assert list(df.columns) == ["point_id", "y", "late"]
    assert (len(df), set(df["late"])) == (6, {1.5})
    with state.engine.connect() as conn:
        got = conn.execute(sa.select(ledger.c.content_hash, ledger.c.part)).all()
    assert set(got) == {("h", part)}


def test_amend_dropping_every_row_or_failing_leaves_no_part(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    (first,), (second,) = _cands(1), _cands(1, start=1)
    claim = store.claim(sweep, [first, second])
    none = store.commit(
        claim, _rows([first]), results=[first.result_name], amend=lambda: lambda t: t.slice(0, 0)
    )
    assert none is None

    def broken(_t: Any) -> Any:
        raise HarvestError("spoiled at the end")

    with pytest.raises(HarvestError, match="spoiled"):
        store.commit(claim, _rows([second]), results=[second.result_name], amend=lambda: broken)
    assert not list(tmp_path.rglob("*.parquet"))
    with state.engine.connect() as conn:
        states = dict(conn.execute(sa.select(ledger.c.result_name, ledger.c.state)).all())
    assert states == {first.result_name: "committed", second.result_name: "claimed"}


def test_streamed_batches_are_gathered_into_few_row_groups(state: StateDB, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from pipeline.store import ROW_GROUP_ROWS

    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    cands = _cands(1)
    per = ROW_GROUP_ROWS // 8 + 1
    batches = [
        pa.record_batch({"point_id": [cands[0].point_id] * per, "y": [float(i)] * per})
        for i in range(20)
    ]
    part = store.commit(store.claim(sweep, cands), iter(batches))
    assert part is not None
    meta = pq.read_metadata(tmp_path / "grid" / "version=1" / part)
    assert meta.num_rows == 20 * per
    assert meta.num_row_groups == 3  # 8 batches, 8 batches, the last 4
    assert sorted(set(store.read("grid")["y"])) == [float(i) for i in range(20)]


def test_expired_claim_is_released_and_cannot_commit(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    slow = ResultStore(state, str(tmp_path), harvester="slow", lease_seconds=0.01)
    claim = slow.claim(sweep, _cands(2))
    time.sleep(0.05)
    other = ResultStore(state, str(tmp_path), harvester="other")
    report = other.recover()
    assert report.released == 2
    taken = other.claim(sweep, _cands(2))
    assert len(taken.results) == 2
    with pytest.raises(HarvestError, match="released"):
        slow.commit(claim, _rows(_cands(2)))
    assert not list(tmp_path.rglob("*.parquet"))
    other.commit(taken, _rows(_cands(2)))
    assert len(other.read("grid")) == 4


def test_live_harvester_is_not_touched_by_recovery(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    live = ResultStore(state, str(tmp_path), harvester="live", lease_seconds=60)
    claim = live.claim(sweep, _cands(2))
    report = ResultStore(state, str(tmp_path), harvester="x").recover()
    assert (report.released, report.removed_staged) == (0, 0)
    assert live.commit(claim, _rows(_cands(2))) is not None


def test_crash_between_commit_and_publish_is_recovered(
    state: StateDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    claim = store.claim(sweep, _cands(3))

    # Fault injection: the process dies right after the ledger transaction.
    def die(*_: object) -> None:
        raise SystemExit("killed")

    monkeypatch.setattr(store, "_publish", die)
    with pytest.raises(SystemExit):
        store.commit(claim, _rows(_cands(3)))
    monkeypatch.undo()
    # Readers see the committed part even before recovery publishes it.
    assert len(store.read("grid")) == 6
    report = ResultStore(state, str(tmp_path)).recover()
    assert report.published == 1
    assert not list((tmp_path / "_staging").rglob("*.parquet"))
    assert len(store.read("grid")) == 6


def test_orphaned_staged_file_is_removed(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path), lease_seconds=0.01)
    claim = store.claim(sweep, _cands(1))
    staged = tmp_path / "_staging" / "grid" / f"part-1-{claim.token}.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"half written")
    time.sleep(0.05)
    report = ResultStore(state, str(tmp_path)).recover()
    assert report.removed_staged == 1
    assert not staged.exists()


def test_compaction_keeps_every_row_once(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    for start in (0, 4, 8):
        cands = _cands(4, start=start)
        store.commit(store.claim(sweep, cands), _rows(cands))
    before = store.read("grid").sort_values(["point_id", "y"]).reset_index(drop=True)
    part = store.compact(sweep)
    assert part is not None
    files = list((tmp_path / "grid" / "version=1").glob("*.parquet"))
    assert [f.name for f in files] == [part]
    after = store.read("grid").sort_values(["point_id", "y"]).reset_index(drop=True)
    assert after.equals(before)
    assert store.compact(sweep) is None


def test_new_column_widens_and_type_conflict_is_reported(state: StateDB, tmp_path: Path) -> None:
    sweep = _sweep(state)
    store = ResultStore(state, str(tmp_path))
    a, b, c = _cands(1), _cands(1, start=1), _cands(1, start=2)
    store.commit(store.claim(sweep, a), pa.table({"point_id": ["a"], "y": [1.0]}))
    store.commit(store.claim(sweep, b), pa.table({"point_id": ["b"], "y": [2.0], "z": ["new"]}))
    df = store.read("grid").sort_values("point_id")
    assert list(df["z"].isna()) == [True, False]
    store.commit(store.claim(sweep, c), pa.table({"point_id": ["c"], "y": ["text"]}))
    with pytest.raises(HarvestError, match="disagree on a column type"):
        store.read("grid")


def _claim_in_process(url: str, root: str, queue: multiprocessing.Queue[int]) -> None:
    db = StateDB(url)
    store = ResultStore(db, root)
    sweep = db.get_sweep("grid")
    cands = _cands(200)
    claim = store.claim(sweep, cands)
    mine = [c for c in cands if c.result_name in claim.results]
    store.commit(claim, _rows(mine, per=1))
    queue.put(len(mine))
    db.close()


def test_concurrent_harvesters_never_duplicate(state: StateDB, tmp_path: Path) -> None:
    _sweep(state)
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[int] = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(state.url, str(tmp_path), queue))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(queue.get() for _ in procs) == 200
    df = ResultStore(state, str(tmp_path)).read("grid")
    assert len(df) == 200
    assert df["point_id"].is_unique
