"""Sweeps driven only by ``celery beat`` and workers, against the emulated BOINC server."""

from __future__ import annotations

from collections.abc import Callable

from .conftest import Cluster, grid, submit_async, wait_for


def test_beat_and_workers_run_a_sweep_to_the_store(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(cushion=8)
    cluster.start_daemons()
    cluster.start_worker("w1", concurrency=2)
    cluster.start_beat()
    task_id = submit_async(cluster, grid("beatrun", 10))
    assert len(task_id) == 36
    try:
        wait_for(
            lambda: cluster.counts("beatrun") == {"harvested": 20},
            90,
            "every point harvested",
        )
    except AssertionError:
        print(cluster.logs())
        raise
    cluster.assert_exactly_once("beatrun", 20)
    with cluster.state() as state:
        rec = state.get_sweep("beatrun")
        kinds = {e["kind"] for e in state.events_of(rec.id, limit=1000)}
    wait_for(lambda: cluster.counts("beatrun") and _status(cluster, "beatrun") == "complete", 20,
             "the sweep marked complete")
    assert "task_failed" not in kinds


def _status(cluster: Cluster, name: str) -> str:
    with cluster.state() as state:
        return state.get_sweep(name).status
