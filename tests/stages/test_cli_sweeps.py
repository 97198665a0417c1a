"""The sweep verbs of the command line, run as real processes against the emulator."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import grid_spec

from .conftest import Bench, make_bench


@pytest.fixture
def bench(tmp_path: Path, sqlite_url: str) -> Iterator[Bench]:
    """The command line does not depend on the BOINC database's engine: SQLite is enough."""
    b = make_bench(tmp_path, sqlite_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield b
    b.project.close()


def _cli(bench: Bench, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BOINC_PIPELINE_STATE": bench.settings.state_url,
        "BOINC_PIPELINE_STORE": bench.settings.store_root,
    }
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=bench.tmp,
        timeout=120,
    )


@pytest.fixture
def files(bench: Bench) -> tuple[Path, Path]:
    server = bench.tmp / "server.yaml"
    server.write_text(yaml.safe_dump(bench.server.model_dump(mode="json")))
    spec = bench.tmp / "grid.yaml"
    spec.write_text(yaml.safe_dump(grid_spec(n=2)))
    return spec, server


def test_submit_status_harvest_results_report(bench: Bench, files: tuple[Path, Path]) -> None:
    spec, server = files
    res = _cli(bench, "submit", str(spec), "--server", str(server), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["created"] == 4

    res = _cli(bench, "status", "grid", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["counts"]["queued"] == 4

    bench.daemons().run_until_idle()
    res = _cli(bench, "harvest", "grid", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ingested"] == 4

    out = bench.tmp / "grid.csv"
    res = _cli(bench, "results", "grid", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["z"]) for r in rows) == [2, 4, 5, 10]

    res = _cli(bench, "status", "grid", "--offline")
    assert res.returncode == 0
    assert "harvested" in res.stdout

    html = bench.tmp / "report.html"
    res = _cli(bench, "report", "grid", "--out", str(html))
    assert res.returncode == 0, res.stderr
    assert "fig-progress" in html.read_text()


def test_unknown_sweep_and_bad_options_exit_2(bench: Bench, files: tuple[Path, Path]) -> None:
    res = _cli(bench, "status", "nope")
    assert res.returncode == 2
    assert "no sweep named 'nope'" in res.stderr
    spec, _server = files
    res = _cli(bench, "submit", str(spec), "--server", "missing-server")
    assert res.returncode == 2
    assert "no server config named 'missing-server'" in res.stderr
    res = _cli(bench, "results", str(spec), "--out", "x.txt")
    assert res.returncode == 2


def test_submission_failure_exits_1(bench: Bench, files: tuple[Path, Path]) -> None:
    spec, server = files
    bench.project.set_b2d_failure("Error: No such image")
    res = _cli(bench, "submit", str(spec), "--server", str(server))
    assert res.returncode == 1
    assert "were not created" in res.stderr
