"""The harvest plan and its chunks, run as the tasks run them, on a sweep the emulator computed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import grid_spec

from pipeline import harvest as hv
from pipeline.api import Sweep
from pipeline.emulator import Daemons, Project
from pipeline.settings import Settings
from pipeline.spec import SweepSpec
from workers import jobs
from workers.resources import Resources
from workers.settings import WorkerSettings


@pytest.fixture
def computed(tmp_path: Path) -> Iterator[Resources]:
    """Resources over an emulated project whose 12-point sweep ``chunks`` is computed."""
    if os.geteuid() != 0:
        pytest.skip("the emulator's hosts need root for mount namespaces")
    project = Project.init(tmp_path / "project", None, tmp_path / "results", image_mode="host")
    servers = tmp_path / "servers"
    servers.mkdir()
    config = {
        "name": "emulated",
        "transport": f"local://{project.root}",
        "results": f"local://{project.results_dir}",
        "boinc_db": {"url": project.db_url},
        "mode": "batch",
        "python": "python3",
        "apps": {"boinc2docker": {"cushion": 100}},
    }
    (servers / "emulated.yaml").write_text(yaml.safe_dump(config))
    settings = Settings(
        f"sqlite:///{tmp_path / 'state.sqlite'}", str(tmp_path / "store"), str(servers)
    )
    spec = SweepSpec.model_validate(grid_spec("chunks", 6, submit={"chunk_size": 12}))
    with Sweep(spec, server="emulated", settings=settings) as sweep:
        sweep.submit()
        Daemons(project, hosts=4).run_until_idle()
        assert sweep.track().counts == {"done": 12}
    res = Resources(settings, WorkerSettings(broker="redis://127.0.0.1:1/0", harvest_chunk=4))
    yield res
    res.close()
    project.close()


def test_chunks_look_up_only_their_results_and_check_the_plans_files(
    computed: Resources,
) -> None:
    res = computed
    plan = jobs.harvest_plan(res, "chunks", None)
    assert (plan["done"], plan["lost"], len(plan["chunks"])) == (12, 0, 3)
    files = plan["files"]
    assert sorted(files) == sorted(n for chunk in plan["chunks"] for n in chunk)
    assert all(path.count("/") == 1 and path.endswith(".tgz") for path in files.values())
    record = res.state.get_sweep("chunks")
    server = res.server(record.server)
    everything = hv._done_points(res.state, server.boinc, record)
    first, second, third = plan["chunks"]
    # The chunk's own lookup finds what the whole sweep's lookup finds for it.
    assert hv.done_results(res.state, server.boinc, record, first) == {
        n: everything[n] for n in first
    }

    out = jobs.harvest_chunk(res, "chunks", 1, first, {n: files[n] for n in first})
    assert (out["done"], out["found"], out["ingested"]) == (4, 4, 4)
    # A message without files (from an older plan) lists the result folder instead.
    out = jobs.harvest_chunk(res, "chunks", 1, second)
    assert (out["done"], out["found"], out["ingested"]) == (4, 4, 4)
    # Files that are not the results' own are left out; those points stay done.
    bad = {
        third[0]: "../../etc/passwd",
        third[1]: files[first[0]],  # another result's archive
        third[2]: "/" + files[third[2]],
        third[3]: files[third[3]],
    }
    out = jobs.harvest_chunk(res, "chunks", 1, third, bad)
    assert (out["done"], out["found"], out["ingested"]) == (4, 1, 1)
    assert res.state.point_counts(record.id) == {"harvested": 9, "done": 3}
    # Results harvested already, or of another sweep version, are not done any more.
    assert hv.done_results(res.state, server.boinc, record, first) == {}
    out = jobs.harvest_chunk(res, "chunks", 1, third, {n: files[n] for n in third})
    assert (out["done"], out["ingested"]) == (3, 3)
    assert res.state.point_counts(record.id) == {"harvested": 12}
    frame = Sweep.open("chunks", settings=res.settings).results()
    assert len(frame) == 12
    assert frame["point_id"].is_unique
