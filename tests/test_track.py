"""Tracking: state classification (pure), failure reasons, and the queries on a real MariaDB."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import boinc
from pipeline.boinc import ErrorMask, Outcome, ServerState
from pipeline.boincdb import BoincDB, ResultRow, WorkunitRow, like_prefix
from pipeline.emulator.records import neutral_row
from pipeline.track import SweepStatus, classify, failure_reason


def _wu(**kw: int) -> WorkunitRow:
    base = dict(
        id=1,
        canonical_resultid=0,
        error_mask=0,
        assimilate_state=0,
        n_unsent=0,
        n_in_progress=0,
        n_over=0,
    )
    base.update(kw)
    return WorkunitRow(name="s_v1_0123456789abcdef_a1", **base)


def _result(outcome: int, exit_status: int = 0, client_state: int = 0) -> ResultRow:
    return ResultRow(
        id=1,
        name="r",
        workunitid=1,
        server_state=int(ServerState.OVER),
        outcome=outcome,
        client_state=client_state,
        validate_state=0,
        exit_status=exit_status,
        hostid=1,
        cpu_time=0.0,
        elapsed_time=0.0,
        received_time=0,
        sent_time=0,
    )


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({}, "queued"),
        ({"n_unsent": 1}, "queued"),
        ({"n_in_progress": 1, "n_unsent": 1}, "running"),
        ({"canonical_resultid": 7, "assimilate_state": 1}, "running"),
        ({"canonical_resultid": 7, "assimilate_state": 2}, "done"),
        # Failed and cancelled workunits are assimilated too: state 2 is not success.
        ({"error_mask": 2, "assimilate_state": 2}, "failed"),
        ({"error_mask": 16, "assimilate_state": 2}, "cancelled"),
        ({"error_mask": 16 | 2, "assimilate_state": 2}, "cancelled"),
        ({"error_mask": 4, "canonical_resultid": 7, "assimilate_state": 2}, "failed"),
    ],
)
def test_classify_follows_boinc_columns(columns: dict[str, int], expected: str) -> None:
    assert classify(_wu(**columns)) == expected


def test_failure_reason_names_bits_and_results() -> None:
    results = [
        _result(Outcome.CLIENT_ERROR, exit_status=3, client_state=3),
        _result(Outcome.CLIENT_ERROR, exit_status=3, client_state=3),
        _result(Outcome.NO_REPLY),
        _result(Outcome.SUCCESS),
    ]
    reason = failure_reason(int(ErrorMask.TOO_MANY_ERROR_RESULTS), results)
    assert reason == (
        "too_many_error_results: 2x client_error (compute_error, exit status 3), 1x no_reply"
    )
    assert failure_reason(32 | 8, []) == "too_many_total_results+no_canonical_result"


def test_like_prefix_escapes_wildcards() -> None:
    assert like_prefix("a_b%c\\") == "a\\_b\\%c\\\\%"


@pytest.fixture
def boinc_mariadb(mariadb_url: str) -> Iterator[BoincDB]:
    engine = sa.create_engine(mariadb_url)
    boinc.metadata.create_all(engine)
    db = BoincDB(mariadb_url, engine=engine)
    yield db
    db.close()


def _insert_workunits(db: BoincDB, names: list[str]) -> None:
    now = int(time.time())
    rows = [
        neutral_row(boinc.workunit, create_time=now, appid=1, name=n, transition_time=now)
        for n in names
    ]
    with db.engine.begin() as conn:
        conn.execute(sa.insert(boinc.workunit), rows)


def _explain(db: BoincDB, query: sa.Select[Any], prefix: str) -> list[Any]:
    """MariaDB's plan for a prefix query, after fresh table statistics."""
    with db.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE TABLE workunit, result")
        bound = query.params(pattern=like_prefix(prefix))
        compiled = bound.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        sql = str(compiled).replace("%%", "%")
        return list(conn.exec_driver_sql(f"EXPLAIN {sql}".replace("%", "%%")).mappings())


def test_prefix_query_uses_the_name_index_on_mariadb(boinc_mariadb: BoincDB) -> None:
    ours = [f"grid_v1_{i:016x}_a1" for i in range(50)]
    others = [f"grid_v10_{i:016x}_a1" for i in range(50)] + [
        f"gridx_v1_{i:016x}_a1" for i in range(50)
    ]
    _insert_workunits(boinc_mariadb, ours + others + [f"other_{i}" for i in range(500)])
    plan = _explain(boinc_mariadb, boinc_mariadb.workunit_states_query(), "grid_v1_")
    wu_plan = next(p for p in plan if p["table"] == "workunit")
    assert wu_plan["key"] == "name", plan
    assert wu_plan["type"] == "range", plan
    states = boinc_mariadb.workunit_states("grid_v1_")
    assert sorted(w.name for w in states) == ours
    assert boinc_mariadb.count_with_prefix("grid_v1_") == 50
    assert set(boinc_mariadb.existing_workunits([*ours[:3], "nope"])) == set(ours[:3])


# Each case: workunit columns, then the server_state of each of its results.
CLASS_CASES: list[tuple[dict[str, int], list[int]]] = [
    ({}, []),
    ({}, [int(ServerState.UNSENT), int(ServerState.UNSENT)]),
    ({}, [int(ServerState.INACTIVE)]),
    ({}, [int(ServerState.UNSENT), int(ServerState.IN_PROGRESS)]),
    ({}, [int(ServerState.OVER), int(ServerState.IN_PROGRESS)]),
    ({}, [int(ServerState.OVER)]),
    ({"canonical_resultid": 7, "assimilate_state": 1}, [int(ServerState.OVER)]),
    ({"canonical_resultid": 7, "assimilate_state": 2}, [int(ServerState.OVER)]),
    ({"canonical_resultid": 7, "assimilate_state": 2}, [int(ServerState.IN_PROGRESS)]),
    ({"error_mask": 2, "assimilate_state": 2}, [int(ServerState.IN_PROGRESS)]),
    ({"error_mask": 16, "assimilate_state": 0}, [int(ServerState.OVER)]),
    ({"error_mask": 16 | 2, "assimilate_state": 2}, []),
    ({"error_mask": 4, "canonical_resultid": 7, "assimilate_state": 2}, []),
]


def _insert_cases(db: BoincDB, prefix: str) -> list[str]:
    now = int(time.time())
    names = [f"{prefix}{i:016x}_a1" for i in range(len(CLASS_CASES))]
    with db.engine.begin() as conn:
        for name, (columns, states) in zip(names, CLASS_CASES, strict=True):
            row = neutral_row(boinc.workunit, create_time=now, appid=1, name=name, **columns)
            wu_id = conn.execute(sa.insert(boinc.workunit), row).inserted_primary_key[0]
            for k, st in enumerate(states):
                conn.execute(
                    sa.insert(boinc.result),
                    neutral_row(
                        boinc.result,
                        create_time=now,
                        workunitid=wu_id,
                        server_state=st,
                        name=f"{name}_{k}",
                        appid=1,
                    ),
                )
    return names


def _assert_sql_matches_classify(db: BoincDB) -> None:
    names = _insert_cases(db, "cls_v1_")
    _insert_workunits(db, ["cls_v10_0000000000000000_a1", "clsx_v1_0000000000000000_a1"])
    by_name = {w.name: w for w in db.workunit_states("cls_v1_")}
    computed = {w.name: w for w in db.workunit_classes("cls_v1_")}
    assert sorted(computed) == names
    expected = {name: classify(by_name[name]) for name in names}
    assert {n: c.state for n, c in computed.items()} == expected
    # Every state is exercised, so a rule that drifts from classify() shows here.
    assert set(expected.values()) == {"queued", "running", "done", "failed", "cancelled"}
    assert {n: c.error_mask for n, c in computed.items()} == {
        n: w.error_mask for n, w in by_name.items()
    }


def test_server_side_classification_matches_classify_on_mariadb(boinc_mariadb: BoincDB) -> None:
    _assert_sql_matches_classify(boinc_mariadb)
    _insert_workunits(boinc_mariadb, [f"other_{i}" for i in range(500)])
    plan = _explain(boinc_mariadb, boinc_mariadb.workunit_classes_query(), "cls_v1_")
    by_table = {p["table"]: p for p in plan}
    assert by_table["workunit"]["key"] == "name", plan
    assert by_table["workunit"]["type"] == "range", plan
    # Results come by workunit id (a rowid filter on the state index may join it).
    assert by_table["r"]["key"].split("|")[0] == "res_wuid", plan


def test_server_side_classification_matches_classify_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'boinc.sqlite'}"
    engine = sa.create_engine(url)
    boinc.metadata.create_all(engine)
    with BoincDB(url, engine=engine) as db:
        _assert_sql_matches_classify(db)


def test_a_status_survives_its_json_form() -> None:
    status = SweepStatus(
        sweep="grid",
        version=2,
        total=5,
        counts={"done": 3, "failed": 2},
        failure_reasons={"too_many_error_results: 2x client_error": 2},
        checked_at=1.5,
    )
    wire = json.loads(json.dumps(status.as_dict()))
    assert SweepStatus.from_dict(wire) == status
