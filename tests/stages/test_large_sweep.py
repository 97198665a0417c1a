"""A 1,000-point sweep with faults, driven to the end through the local and SSH transports.

The large sweep uses `fast` mode: in `batch` mode every workunit costs the
emulator's `bin/create_work` a Python start-up, as every workunit costs a real
server a `create_work` process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from transport.sshd import SSHServer, sshd_server

from pipeline.config import AppConfig

from .conftest import Bench, make_bench

__all__ = ["sshd_server"]

FAULTS = "client_error=0.04:9,corrupt=0.02,results_permission=0.02,no_output=0.01,seed=11"


def _spec(name: str, nx: int, ny: int, mode: str) -> dict[str, object]:
    return {
        "name": name,
        "image": "boinc-pipeline-test/host:latest",
        "command": [
            "sh",
            "-c",
            "echo z=$(({x} * {y})) > /root/shared/results/out.txt",
        ],
        "parameters": {"grid": {"x": list(range(nx)), "y": list(range(ny))}},
        "job": {"max_error_results": 0, "max_total_results": 1, "delay_bound": 3600},
        "submit": {"max_attempts": 4, "chunk_size": 250, "mode": mode},
        "outputs": [{"file": "out.txt", "kind": "keyvalue"}],
    }


def _run(bench: Bench, spec: dict[str, object], total: int) -> None:
    bench.server = bench.server.model_copy(
        update={"apps": {"boinc2docker": AppConfig(cushion=2 * total)}}
    )
    daemons = bench.daemons(FAULTS, hosts=8)
    with bench.sweep(spec) as sweep:
        sweep.submit()
        first = sweep.track()
        assert first.counts == {"queued": total}
        for _round in range(10):
            daemons.run_until_idle(max_passes=400)
            report = sweep.harvest()
            status = sweep.track()
            assert sum(status.counts.values()) == total
            assert status.counts.get("harvested", 0) >= report.ingested
            if sweep.is_finished(status):
                break
            sweep.submit()
        assert sweep.is_finished(status)
        points = sweep.status()
        harvested = points[points["state"] == "harvested"]
        exhausted = points[points["state"] == "exhausted"]
        assert len(harvested) + len(exhausted) == total
        assert exhausted["reason"].notna().all()
        assert (exhausted["attempt"] == 4).all()
        df = sweep.results()
        assert len(df) == len(harvested)
        assert df["point_id"].is_unique
        assert (df["z"] == df["p.x"] * df["p.y"]).all()
        retried = points[points["attempt"] > 1]
        assert len(retried) > 0, "faults this frequent must force retries"


@pytest.fixture
def local_bench(tmp_path: Path, mariadb_url: str) -> Iterator[Bench]:
    b = make_bench(tmp_path, mariadb_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield b
    b.project.close()


@pytest.mark.slow
def test_thousand_points_local(local_bench: Bench) -> None:
    _run(local_bench, _spec("big", 50, 20, "fast"), 1000)


@pytest.mark.slow
def test_sweep_over_ssh(tmp_path: Path, mariadb_url: str, sshd_server: SSHServer) -> None:
    bench = make_bench(tmp_path, mariadb_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    try:
        bench.server = bench.server.model_copy(
            update={
                "transport": sshd_server.url(str(bench.project.root)),
                "results": sshd_server.url(str(bench.project.results_dir)),
                "python": sys.executable,
            }
        )
        _run(bench, _spec("remote", 10, 8, "batch"), 80)
    finally:
        bench.project.close()
