"""Harvesting exactly once: concurrent harvest processes, and a harvester killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import grid_spec

from pipeline.state import ledger

from .conftest import Bench, make_bench

_HARVESTER = textwrap.dedent(
    """
    import json, sys
    from pipeline.api import Sweep
    from pipeline.config import ServerConfig
    from pipeline.settings import Settings
    from pipeline.spec import SweepSpec
    a = json.loads(sys.argv[1])
    with Sweep(SweepSpec.model_validate(a["spec"]), server=ServerConfig.model_validate(a["server"]),
               settings=Settings(state_url=a["state"], store_root=a["store"])) as s:
        r = s.harvest(chunk_size=a["chunk"])
        print(json.dumps(r.as_dict()), flush=True)
    """
)


@pytest.fixture
def done_bench(tmp_path: Path, mariadb_url: str) -> Iterator[tuple[Bench, dict[str, object]]]:
    """Twelve points run to completion on the emulator, none harvested yet."""
    bench = make_bench(tmp_path, mariadb_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    spec = grid_spec(n=6)
    with bench.sweep(spec) as sweep:
        sweep.submit()
        bench.daemons().run_until_idle()
        assert sweep.track().counts == {"done": 12}
    yield bench, spec
    bench.project.close()


def _args(bench: Bench, spec: dict[str, object], chunk: int) -> str:
    return json.dumps(
        {
            "spec": spec,
            "server": bench.server.model_dump(mode="json"),
            "state": bench.settings.state_url,
            "store": bench.settings.store_root,
            "chunk": chunk,
        }
    )


def _rows(bench: Bench, spec: dict[str, object]) -> list[str]:
    with bench.sweep(spec) as sweep:
        return list(sweep.results()["point_id"])


def test_two_harvesters_at_once_ingest_each_point_once(
    done_bench: tuple[Bench, dict[str, object]],
) -> None:
    bench, spec = done_bench
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HARVESTER, _args(bench, spec, 2)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["ingested"] for r in reports) == 12
    rows = _rows(bench, spec)
    assert len(rows) == 12
    assert len(set(rows)) == 12


@pytest.mark.slow
def test_killed_harvester_leaves_nothing_twice_or_missing(
    done_bench: tuple[Bench, dict[str, object]],
) -> None:
    bench, spec = done_bench
    store = Path(bench.settings.store_root)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HARVESTER, _args(bench, spec, 1)], start_new_session=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(store.rglob("*.parquet"))) >= 3:
            break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Whatever it left (claims, staged parts), the next harvest finishes the job
    # once the dead harvester's lease has expired: the lease (5 minutes) is made
    # to run out now instead of waiting for it.
    with bench.sweep(spec) as sweep:
        with sweep.state.engine.begin() as conn:
            conn.execute(ledger.update().where(ledger.c.state == "claimed").values(lease_until=0))
        sweep.harvest()
        rows = list(sweep.results()["point_id"])
    assert sorted(rows) == sorted(set(rows))
    assert len(rows) == 12
