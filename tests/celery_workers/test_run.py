"""Sweeps driven only by ``celery beat`` and workers, against the emulated BOINC server."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from conftest import grid_spec, port_open, service_missing

from pipeline.state import attempts

from .conftest import Cluster, slow_tool, submit_async, wait_for

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def _run_to_the_end(cluster: Cluster, name: str, points: int, timeout: float = 120) -> None:
    try:
        wait_for(
            lambda: cluster.counts(name) == {"harvested": points}, timeout, f"{name} harvested"
        )
    except AssertionError:
        print(cluster.logs())
        raise


def _status(cluster: Cluster, name: str) -> str:
    with cluster.state() as state:
        return state.get_sweep(name).status


def _events(cluster: Cluster, kind: str) -> list[dict[str, object]]:
    with cluster.state() as state:
        return [e for e in state.events_of(limit=1000) if e["kind"] == kind]


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=pytest.mark.slow)])
def test_two_prefork_workers_and_beat_run_a_sweep_to_the_store(
    make_cluster: Callable[..., Cluster], redis_url: str, broker: str
) -> None:
    if broker == "rabbitmq" and not port_open("127.0.0.1", 5672):
        service_missing("rabbitmq", "nothing listens on 127.0.0.1:5672")
    cluster = make_cluster(cushion=40, broker=RABBITMQ if broker == "rabbitmq" else redis_url)
    cluster.start_daemons(hosts=4)
    cluster.start_worker("w1", concurrency=2)
    cluster.start_worker("w2", concurrency=2)
    cluster.start_beat()
    assert len(submit_async(cluster, grid_spec("beatrun", 8, submit={"chunk_size": 3}))) == 36
    _run_to_the_end(cluster, "beatrun", 16)
    cluster.assert_exactly_once("beatrun", 16)
    wait_for(lambda: _status(cluster, "beatrun") == "complete", 20, "the sweep marked complete")
    assert _events(cluster, "task_failed") == []
    # Both workers took part, so the run was really concurrent.
    logs = {w: (cluster.tmp / f"{w}.log").read_text() for w in ("w1", "w2")}
    assert all("boinc_pipeline." in text and "succeeded" in text for text in logs.values())


def test_a_task_that_cannot_succeed_is_recorded_in_the_state_database(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster()
    cluster.start_worker("w1")
    # A sweep name nobody recorded: a ConfigError, not worth a retry.
    code = "from workers.enqueue import harvest_async; print(harvest_async('no-such-sweep'))"
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], env=cluster.env, check=True, timeout=60)
    failed = wait_for(lambda: _events(cluster, "task_failed"), 60, "a task_failed event")
    assert "boinc_pipeline.harvest failed: ConfigError" in str(failed[0]["message"])
    assert "no-such-sweep" in str(failed[0]["message"])
    assert failed[0]["data"]["recoverable"] is False  # type: ignore[index]


@pytest.mark.slow
def test_kill_9_in_a_top_up_and_in_a_harvest_loses_and_duplicates_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(cushion=40)
    tools = cluster.tmp / "slow-tools"
    python = slow_tool(tools, "slow-python3", shutil.which("python3") or "python3", 1.0)
    cluster.python = str(python)
    cluster.write_server()
    slow_tool(tools, "tar", shutil.which("tar") or "/bin/tar", 0.4)
    cluster.start_daemons(hosts=4)
    cluster.start_worker("w1")
    cluster.start_beat()
    submit_async(cluster, grid_spec("killed", 8, submit={"chunk_size": 4}))

    def mid_top_up() -> bool:
        with cluster.state() as state, state.engine.connect() as conn:
            rows = conn.execute(sa.select(attempts.c.submitted_at)).all()
        confirmed = sum(r.submitted_at is not None for r in rows)
        return 0 < confirmed < 16 and any(r.submitted_at is None for r in rows)

    wait_for(mid_top_up, 60, "a top-up with created and reserved workunits", every=0.05)
    cluster.kill("w1")
    cluster.start_worker("w2", path=tools)

    def mid_harvest() -> bool:
        from pipeline.state import ledger

        with cluster.state() as state, state.engine.connect() as conn:
            claimed = conn.execute(
                sa.select(sa.func.count()).where(ledger.c.state == "claimed")
            ).scalar_one()
        return claimed > 0 and 0 < cluster.counts("killed").get("harvested", 0) < 16

    wait_for(mid_harvest, 90, "a harvest chunk holding claims", every=0.05)
    cluster.kill("w2")
    cluster.start_worker("w3")
    _run_to_the_end(cluster, "killed", 16)
    cluster.assert_exactly_once("killed", 16)
