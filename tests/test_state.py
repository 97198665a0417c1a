"""The state database on the three engines it supports: SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pipeline.errors import ConfigError, StateError
from pipeline.state import SCHEMA_VERSION, StateDB, migrate, schema_table


@pytest.fixture(params=["sqlite", "mariadb", "postgres"])
def state_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def db(state_url: str) -> StateDB:
    state = StateDB(state_url)
    yield state
    state.close()


def _register(db: StateDB, spec_hash: str = "h1", version: int = 1) -> int:
    return db.register_sweep(
        name="grid", version=version, spec={"name": "grid"}, spec_hash=spec_hash, app="b2d"
    ).id


def test_migrate_is_idempotent_and_records_version(state_url: str) -> None:
    first = StateDB(state_url)
    first.close()
    engine = sa.create_engine(state_url)
    assert migrate(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema_table.c.version)).scalar_one() == SCHEMA_VERSION
    engine.dispose()


def test_newer_schema_is_refused(state_url: str) -> None:
    StateDB(state_url).close()
    engine = sa.create_engine(state_url)
    with engine.begin() as conn:
        conn.execute(schema_table.update().values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(StateError, match="newer than this boinc-pipeline"):
        StateDB(state_url)


def test_register_same_hash_returns_same_sweep(db: StateDB) -> None:
    first = _register(db)
    assert _register(db) == first
    assert db.latest_version("grid") == 1


def test_changed_spec_under_same_version_is_refused(db: StateDB) -> None:
    _register(db, "h1")
    with pytest.raises(ConfigError, match=r"version: 2"):
        _register(db, "h2")
    second = _register(db, "h2", version=2)
    assert db.get_sweep("grid").id == second
    assert db.get_sweep("grid", 1).spec_hash == "h1"


def test_unknown_sweep_names_the_sweep(db: StateDB) -> None:
    with pytest.raises(ConfigError, match="no sweep named 'nope'"):
        db.get_sweep("nope")


def test_points_are_added_once(db: StateDB) -> None:
    sweep = _register(db)
    items = [(f"{i:016x}", f'{{"x": {i}}}') for i in range(1200)]
    assert db.add_points(sweep, items[:700], chunk=256) == 700
    assert db.add_points(sweep, items, chunk=256) == 1200
    assert db.point_counts(sweep) == {"planned": 1200}
    assert db.get_sweep("grid").n_points == 1200


def test_reserve_confirm_and_drop_attempts(db: StateDB) -> None:
    sweep = _register(db)
    db.add_points(sweep, [("a" * 16, "{}"), ("b" * 16, "{}"), ("c" * 16, "{}")])
    db.reserve_attempts(sweep, [("a" * 16, 1, "wa1"), ("b" * 16, 1, "wb1"), ("c" * 16, 1, "wc1")])
    # Reserving again (a retried task) changes nothing.
    db.reserve_attempts(sweep, [("a" * 16, 1, "wa1")])
    assert sorted(a.wu_name for a in db.pending_attempts(sweep)) == ["wa1", "wb1", "wc1"]
    assert db.point_counts(sweep) == {"submitted": 3}

    db.confirm_attempts({"wa1": 11, "wb1": 12})
    db.drop_attempts(sweep, ["wc1", "wa1"])  # wa1 is confirmed: it must survive
    assert [a.wu_name for a in db.pending_attempts(sweep)] == []
    kept = {a.wu_name: a.wu_id for a in db.attempts_of(sweep)}
    assert kept == {"wa1": 11, "wb1": 12}
    assert db.point_counts(sweep) == {"submitted": 2, "planned": 1}
    assert db.points_in_state(sweep, ["planned"]) == [("c" * 16, 0, {})]


def test_finish_attempts_and_point_states(db: StateDB) -> None:
    sweep = _register(db)
    db.add_points(sweep, [("a" * 16, "{}")])
    db.reserve_attempts(sweep, [("a" * 16, 1, "wa1")])
    db.confirm_attempts({"wa1": 5})
    db.finish_attempts([("wa1", "failed", "client error, exit status 3")])
    db.set_point_states(sweep, [("a" * 16, "failed", "client error, exit status 3")])
    (attempt,) = db.attempts_of(sweep, "a" * 16)
    assert (attempt.outcome, attempt.reason) == ("failed", "client error, exit status 3")
    assert db.point_counts(sweep) == {"failed": 1}
    db.reserve_attempts(sweep, [("a" * 16, 2, "wa2")])
    assert db.points_in_state(sweep, ["submitted"]) == [("a" * 16, 2, {})]


def test_events_are_logged_newest_first(db: StateDB) -> None:
    sweep = _register(db)
    db.log_event("submit", "created 3 workunits", sweep_id=sweep, n=3)
    db.log_event("error", "transport dropped", sweep_id=sweep)
    got = db.events_of(sweep)
    assert [e["kind"] for e in got] == ["error", "submit"]
    assert got[1]["data"] == {"n": 3}


def test_url_safe_hides_password() -> None:
    db = StateDB.__new__(StateDB)
    db.url = "mysql+pymysql://root:s3cret@127.0.0.1/x"
    assert "s3cret" not in db.url_safe


def test_an_older_schema_is_migrated_with_its_data(state_url: str) -> None:
    from pipeline.state import MIGRATIONS, ledger, sweeps

    engine = sa.create_engine(state_url)
    with engine.begin() as conn:
        schema_table.create(conn)
        conn.execute(schema_table.insert().values(id=1, version=1))
        MIGRATIONS[1](conn)
        conn.execute(
            sweeps.insert().values(
                name="old", version=1, spec_json="{}", spec_hash="h", app="a", created_at=1.0
            )
        )
    assert not sa.inspect(engine).has_table("bp_ledger")
    engine.dispose()
    db = StateDB(state_url)
    try:
        assert db.get_sweep("old").spec_hash == "h"
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(schema_table.c.version)).scalar_one() == SCHEMA_VERSION
            assert conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one() == 0
    finally:
        db.close()


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://postgres@127.0.0.1:1/x", "mysql+pymysql://root@127.0.0.1:1/x"]
)
def test_unreachable_state_database_is_a_recoverable_error(url: str) -> None:
    from pipeline.errors import StateUnavailable

    with pytest.raises(StateUnavailable, match="unreachable") as err:
        StateDB(url)
    assert err.value.recoverable


def test_set_point_states_keeps_sticky_states(db: StateDB) -> None:
    sweep = _register(db)
    db.add_points(sweep, [("a" * 16, "{}"), ("b" * 16, "{}")])
    db.set_point_states(sweep, [("a" * 16, "harvested", None)])
    # A stale writer that read the points before the harvest must not undo it.
    db.set_point_states(
        sweep, [("a" * 16, "done", None), ("b" * 16, "done", None)], keep=["harvested", "lost"]
    )
    assert db.point_counts(sweep) == {"harvested": 1, "done": 1}
