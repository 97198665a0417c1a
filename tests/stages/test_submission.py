"""Submission against the emulator: modes, idempotency, crash safety, cushion, retries, cancel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import grid_spec

from pipeline import boinc
from pipeline.config import AppConfig
from pipeline.errors import ConfigError, SubmissionError
from pipeline.submit import cancel_ranges, share_shortfall

from .conftest import Bench, make_bench


def _drive(bench: Bench, sweep: object, faults: str = "", rounds: int = 8) -> dict[str, int]:
    """Submit, run the daemons, harvest, until the sweep is finished; return the counts."""
    daemons = bench.daemons(faults, clock_factor=1.0)
    status = None
    for _ in range(rounds):
        sweep.submit()  # type: ignore[attr-defined]
        daemons.run_until_idle()
        sweep.harvest()  # type: ignore[attr-defined]
        status = sweep.track()  # type: ignore[attr-defined]
        if sweep.is_finished(status):  # type: ignore[attr-defined]
            break
    assert status is not None
    return status.counts


def _workunit_names(bench: Bench) -> list[str]:
    with bench.project.engine().connect() as conn:
        return [r.name for r in conn.execute(sa.select(boinc.workunit.c.name))]


def test_batch_mode_runs_under_python2(tmp_path: Path, sqlite_url: str, python2: str) -> None:
    bench = make_bench(tmp_path, sqlite_url, f"sqlite:///{tmp_path / 'st.sqlite'}", python2)
    spec = grid_spec(n=2, params_file=True, prerun=["echo prerun > /root/shared/results/pre.txt"])
    with bench.sweep(spec) as sweep:
        assert sweep.submit().report.created == 4
        bench.daemons().run_until_idle()
        assert sweep.harvest().ingested == 4
        assert sorted(sweep.results()["z"]) == [2, 4, 5, 10]
    bench.project.close()


def test_script_mode_creates_the_same_sweep(bench: Bench) -> None:
    with bench.sweep(grid_spec(n=2, submit={"mode": "script"})) as sweep:
        assert sweep.mode == "script"
        assert sweep.submit().report.created == 4
        bench.daemons().run_until_idle()
        sweep.harvest()
        assert sorted(sweep.results()["z"]) == [2, 4, 5, 10]


def test_script_mode_refuses_per_job_files(bench: Bench) -> None:
    with bench.sweep(grid_spec(params_file=True, submit={"mode": "script"})) as sweep:
        with pytest.raises(ConfigError, match="cannot carry"):
            sweep.submit()
        assert _workunit_names(bench) == []


def test_silent_boinc2docker_failure_is_detected(bench: Bench) -> None:
    bench.project.set_b2d_failure("Error response from daemon: client version 1.22 is too old")
    with bench.sweep(grid_spec(n=1)) as sweep:
        with pytest.raises(SubmissionError, match="not created") as err:
            sweep.submit()
        assert "DOCKER_MIN_API_VERSION" in str(err.value)
        assert _workunit_names(bench) == []
        # Nothing is left half-done: the points wait for the next pass.
        assert sweep.counts() == {"planned": 2}
        assert sweep.state.pending_attempts(sweep.record.id) == []
        bench.project.set_b2d_failure(None)
        assert sweep.submit().report.created == 2


def test_foreign_workunits_with_the_prefix_stop_the_first_submission(bench: Bench) -> None:
    subprocess.run(
        [
            "bin/boinc2docker_create_work.py",
            "--wu_name",
            "grid_v1_0000000000000000_a1",
            "x",
            "true",
        ],
        cwd=bench.project.root,
        check=True,
        capture_output=True,
    )
    with bench.sweep(grid_spec()) as sweep, pytest.raises(ConfigError, match="does not know"):
        sweep.submit()


def test_cushion_is_respected(bench: Bench) -> None:
    bench.server = bench.server.model_copy(update={"apps": {"boinc2docker": AppConfig(cushion=4)}})
    with bench.sweep(grid_spec(n=5, submit={"chunk_size": 3})) as sweep:
        assert sweep.submit().report.created == 4
        # Not yet transitioned: the new workunits count as queued, nothing more is sent.
        assert sweep.submit().report.created == 0
        daemons = bench.daemons(hosts=0)
        daemons.run_until_idle()
        assert sweep.submit().report.created == 0
        unsent = sweep.server.boinc.unsent_results(sweep.server.boinc.app_id("boinc2docker"))
        assert unsent == 4
        bench.daemons(hosts=2).run_until_idle()
        assert sweep.submit().report.created == 4
        assert sweep.submit().report.created == 0


def test_failed_points_are_retried_until_max_attempts(bench: Bench) -> None:
    spec = grid_spec(
        n=3,
        job={"max_error_results": 0, "max_total_results": 1},
        submit={"max_attempts": 2},
    )
    with bench.sweep(spec) as sweep:
        counts = _drive(bench, sweep, "client_error=1.0:7,seed=1")
        assert counts == {"exhausted": 6}
        attempts = sweep.state.attempts_of(sweep.record.id)
        assert len(attempts) == 12
        assert {a.attempt for a in attempts} == {1, 2}
        reasons = sweep.status()["reason"].unique()
        assert len(reasons) == 1
        assert "too_many_error_results" in reasons[0]
        assert "exit status 7" in reasons[0]


def test_a_failure_keeps_the_reason_it_was_first_tracked_with(bench: Bench) -> None:
    spec = grid_spec(
        n=1, job={"max_error_results": 0, "max_total_results": 1}, submit={"max_attempts": 1}
    )
    with bench.sweep(spec) as sweep:
        sweep.submit()
        bench.daemons("client_error=1.0:9,seed=3").run_until_idle()
        first = sweep.track()
        assert first.counts.get("failed") == 2, first.counts
        [reason] = first.failure_reasons
        assert "exit status 9" in reason
        # Results leave BOINC's tables before their workunit does (db_purge);
        # the reason recorded when the failure was first seen stays.
        with bench.project.engine().begin() as conn:
            conn.execute(sa.delete(boinc.result))
        again = sweep.track()
        assert again.failure_reasons == first.failure_reasons
        assert again.counts == first.counts


def test_faults_are_retried_and_the_sweep_completes(bench: Bench) -> None:
    spec = grid_spec(
        n=4, job={"max_error_results": 0, "max_total_results": 1}, submit={"max_attempts": 6}
    )
    with bench.sweep(spec) as sweep:
        counts = _drive(
            bench, sweep, "client_error=0.3,corrupt=0.15,results_permission=0.15,seed=3", rounds=12
        )
        assert counts == {"harvested": 8}
        df = sweep.results()
        assert len(df) == 8
        assert df["point_id"].is_unique
        assert sorted(df["z"]) == sorted(x * y for x in (1, 2, 3, 4) for y in (2, 5))
        retried = [a for a in sweep.state.attempts_of(sweep.record.id) if a.attempt > 1]
        assert retried, "the seeded faults should have forced at least one retry"


def test_lost_results_are_reported_and_retried(bench: Bench) -> None:
    with bench.sweep(grid_spec(n=1)) as sweep:
        sweep.submit()
        bench.daemons("results_permission=1.0").run_until_idle()
        report = sweep.harvest()
        assert report.lost == 2
        status = sweep.status()
        assert set(status["state"]) == {"lost"}
        assert "permission" in status["reason"].iloc[0]
        sweep.retry()
        bench.daemons().run_until_idle()
        sweep.harvest()
        assert sweep.track().counts == {"harvested": 2}
        assert set(sweep.results()["attempt"]) == {2}


def test_cancel_uses_ranges_and_names(bench: Bench) -> None:
    with bench.sweep(grid_spec(n=3)) as sweep:
        sweep.submit()
        assert sweep.cancel() == 6
        assert sweep.track().counts == {"cancelled": 6}
        with bench.project.engine().connect() as conn:
            masks = {r.error_mask for r in conn.execute(sa.select(boinc.workunit.c.error_mask))}
        assert masks == {16}


def test_cancel_ranges_never_cover_foreign_ids() -> None:
    assert cancel_ranges([5, 1, 2, 3, 9, 10, 7]) == ([(1, 3), (9, 10)], [5, 7])
    assert cancel_ranges([]) == ([], [])


def test_share_shortfall_by_priority_then_evenly() -> None:
    assert share_shortfall(10, [("a", 0, 100), ("b", 0, 100)]) == {"a": 5, "b": 5}
    assert share_shortfall(10, [("a", 1, 4), ("b", 0, 100)]) == {"a": 4, "b": 6}
    assert share_shortfall(5, [("a", 0, 1), ("b", 0, 100), ("c", 0, 100)]) == {
        "a": 1,
        "b": 2,
        "c": 2,
    }
    assert share_shortfall(0, [("a", 0, 3)]) == {"a": 0}


_SUBMITTER = textwrap.dedent(
    """
    import sys
    from pipeline.api import Sweep
    from pipeline.config import DbConfig, ServerConfig
    from pipeline.settings import Settings
    from pipeline.spec import SweepSpec
    import json
    args = json.loads(sys.argv[1])
    server = ServerConfig(name="e", transport=args["transport"], results=args["results"],
                          boinc_db=DbConfig(url=args["db"]), mode="batch", python=args["python"])
    with Sweep(SweepSpec.model_validate(args["spec"]), server=server,
               settings=Settings(state_url=args["state"], store_root=args["store"])) as s:
        print("submitted", s.submit().report.created, flush=True)
    """
)


@pytest.mark.slow
def test_kill_during_submission_never_duplicates(bench: Bench) -> None:
    import json

    spec = grid_spec(n=6, submit={"chunk_size": 12})
    args = json.dumps(
        {
            "transport": bench.server.transport,
            "results": bench.server.results,
            "db": bench.server.boinc_db.url,
            "python": bench.server.python,
            "spec": spec,
            "state": bench.settings.state_url,
            "store": bench.settings.store_root,
        }
    )
    for delay in (1.0, 2.0):
        proc = subprocess.Popen([sys.executable, "-c", _SUBMITTER, args], start_new_session=True)
        deadline = time.monotonic() + 60
        while len(_workunit_names(bench)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay * 0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with bench.sweep(spec) as sweep:
        sweep.submit()
        names = _workunit_names(bench)
        assert len(names) == 12 == len(set(names))
        attempts = sweep.state.attempts_of(sweep.record.id)
        assert len(attempts) == 12
        assert all(a.submitted_at is not None and a.wu_id for a in attempts)


def test_point_detail_lists_attempts_and_their_results(bench: Bench) -> None:
    spec = grid_spec(n=1, job={"max_error_results": 0, "max_total_results": 1})
    with bench.sweep(spec) as sweep:
        _drive(bench, sweep, "client_error=1.0:7,seed=1")
        pid = sweep.status()["point_id"].iloc[0]
        detail = sweep.point_detail(pid[:8])
    assert detail["point_id"] == pid
    assert detail["state"] == "exhausted"
    assert [a["attempt"] for a in detail["attempts"]] == [1, 2]
    for attempt in detail["attempts"]:
        (result,) = attempt["results"]
        assert (result["outcome"], result["exit_status"]) == ("client_error", 7)
        assert result["client_state"] == "compute_error"
        assert result["hostid"] > 0
