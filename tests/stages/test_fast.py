"""Fast mode against the emulator: equivalence with batch, resume, kill -9.

These tests run the emulator in docker image mode (each job loads its image into the
real Docker engine). Fast mode works against host image mode too: its boinc2docker
``boinc_app`` runs through the emulator's ``docker`` shim (tests/emulator/test_host_mode.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import boinc
from pipeline.config import AppConfig
from pipeline.fast import SHARED_FLAGS, ServerLayout, create_fast, read_layout
from pipeline.plan import plan

from .conftest import Bench, make_bench

_HEX = re.compile(r"_[0-9a-f]{32}")
_COLUMNS = (
    "appid",
    "batch",
    "rsc_fpops_est",
    "rsc_fpops_bound",
    "rsc_memory_bound",
    "rsc_disk_bound",
    "delay_bound",
    "min_quorum",
    "target_nresults",
    "max_error_results",
    "max_total_results",
    "max_success_results",
    "priority",
    "result_template_file",
    "size_class",
    "hr_class",
    "app_version_num",
)


@pytest.fixture
def dbench(tmp_path: Path, sqlite_url: str, busybox_image: str) -> Iterator[Bench]:
    """An emulated server in docker image mode, so jobs run in the real Docker engine."""
    b = make_bench(tmp_path, sqlite_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    b.project.set_image_mode("docker")
    yield b
    b.project.close()


def _spec(name: str, image: str, mode: str, n: int = 2, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "command": [
            "sh",
            "-c",
            "echo z=$(({x} * {y})) > /root/shared/results/out.txt && "
            "cp /root/shared/params.json /root/shared/results/p.json",
            "--label={label}",
        ],
        "params_file": True,
        "prerun": ["mkdir -p /root/shared/results", "echo pre > /root/shared/results/pre.txt"],
        "parameters": {
            "grid": {"x": list(range(1, n + 1)), "y": [2, 5], "label": ["it's a $test"]}
        },
        "outputs": [{"file": "out.txt", "kind": "keyvalue"}],
        "job": {"rsc_memory_bound": 1_234_567_890, "rsc_disk_bound": 2_000_000_000},
        "submit": {"mode": mode},
    }
    spec.update(extra)
    return spec


def _rows(bench: Bench, prefix: str) -> dict[str, Any]:
    wu = boinc.workunit
    with bench.project.engine().connect() as conn:
        rows = conn.execute(sa.select(wu).where(wu.c.name.like(prefix + "%"))).all()
    return {r.name.split("_")[2]: r for r in rows}  # point id -> row


def _files(xml_doc: bytes) -> list[tuple[str, str, tuple[str, ...]]]:
    """(name with unique suffixes blanked, open name, flags) in xml_doc order."""
    root = ET.fromstring(b"<r>" + xml_doc + b"</r>")
    flags = {
        (fi.findtext("name") or "").strip(): tuple(
            c.tag for c in fi if c.tag not in ("name", "url", "md5_cksum", "nbytes")
        )
        for fi in root.findall("file_info")
    }
    out = []
    for fr in root.findall("workunit/file_ref"):
        name = (fr.findtext("file_name") or "").strip()
        out.append(
            (_HEX.sub("_<hex>", name), (fr.findtext("open_name") or "").strip(), flags[name])
        )
    return out


def _all_staged_are_referenced(bench: Bench) -> None:
    referenced: set[str] = set()
    with bench.project.engine().connect() as conn:
        for (doc,) in conn.execute(sa.select(boinc.workunit.c.xml_doc)):
            root = ET.fromstring(b"<r>" + doc + b"</r>")
            referenced |= {(fi.findtext("name") or "").strip() for fi in root.findall("file_info")}
    staged = {
        p.name
        for p in bench.project.download_dir.rglob("*")
        if p.is_file() and not p.name.endswith(".md5")
    }
    assert staged <= referenced, sorted(staged - referenced)[:5]


@pytest.mark.slow
def test_fast_and_batch_workunits_are_equivalent_and_give_the_same_outputs(
    dbench: Bench, busybox_image: str
) -> None:
    results = {}
    for mode in ("batch", "fast"):
        with dbench.sweep(_spec(f"eq{mode}", busybox_image, mode)) as sweep:
            assert sweep.submit().report.created == 4
    batch, fast = _rows(dbench, "eqbatch_v1_"), _rows(dbench, "eqfast_v1_")
    assert sorted(batch) == sorted(fast)
    for pid, b_row in batch.items():
        f_row = fast[pid]
        assert _files(f_row.xml_doc) == _files(b_row.xml_doc)
        assert [getattr(f_row, c) for c in _COLUMNS] == [getattr(b_row, c) for c in _COLUMNS]
    opens = [o for _n, o, _f in _files(next(iter(fast.values())).xml_doc)]
    assert opens[:3] == ["shared/params.json", "vbox_job.xml", "shared/boinc_app"]
    assert all(o.startswith("shared/image/") for o in opens[3:])
    # All but the first of the fast sweep went through create_work --stdin with
    # boinc_app files written by pipeline.fast (boinc2docker's layout).
    apps = [
        dbench.project.download_path(n).read_text()
        for row in fast.values()
        for n, o in _names_and_opens(row.xml_doc)
        if o == "shared/boinc_app"
    ]
    assert sum("mktemp -d" in a for a in apps) == 3
    # The argument is escaped as bash's printf %q escapes it.
    ours = [a for a in apps if "mktemp -d" in a]
    assert all("--label=it\\'s\\ a\\ \\$test" in a for a in ours)

    dbench.daemons().run_until_idle()
    for mode in ("batch", "fast"):
        with dbench.sweep(_spec(f"eq{mode}", busybox_image, mode)) as sweep:
            assert sweep.harvest().ingested == 4
            frame = sweep.results()
            results[mode] = sorted(
                zip(frame["p.x"].tolist(), frame["p.y"].tolist(), frame["z"].tolist(), strict=True)
            )
    assert results["fast"] == results["batch"] == [(1, 2, 2), (1, 5, 5), (2, 2, 4), (2, 5, 10)]


def _names_and_opens(xml_doc: bytes) -> list[tuple[str, str]]:
    root = ET.fromstring(b"<r>" + xml_doc + b"</r>")
    return [
        ((fr.findtext("file_name") or "").strip(), (fr.findtext("open_name") or "").strip())
        for fr in root.findall("workunit/file_ref")
    ]


@pytest.mark.slow
def test_parameters_in_a_file_share_one_boinc_app(dbench: Bench, busybox_image: str) -> None:
    spec = _spec(
        "shared",
        busybox_image,
        "fast",
        n=3,
        command=["sh", "-c", "cp /root/shared/params.json /root/shared/results/p.json"],
        outputs=[{"file": "p.json", "kind": "json", "prefix": "echo"}],
    )
    with dbench.sweep(spec) as sweep:
        assert sweep.submit().report.created == 6
        rows = _rows(dbench, "shared_v1_")
        docs = [_files(r.xml_doc) for r in rows.values()]
        lean = [d for d in docs if d[1][2] == SHARED_FLAGS]
        assert len(lean) == 5  # the first was made by the stock function
        names = {tuple(n for n, _o, _f in d[1:3]) for d in lean}
        assert len(names) == 1  # one boinc_app and one vbox_job for the whole sweep
        raw = [_names_and_opens(r.xml_doc) for r in rows.values()]
        per_job = {n for doc in raw for n, o in doc if o == "shared/params.json"}
        assert len(per_job) == 6
        dbench.daemons().run_until_idle()
        assert sweep.harvest().ingested == 6
        frame = sweep.results()
        assert sorted(frame["echo.x"].tolist()) == sorted(frame["p.x"].tolist())
        assert sorted(frame["echo.y"].tolist()) == sorted(frame["p.y"].tolist())
        # The file deleter keeps the shared files (sticky, no_delete) after the jobs.
        shared_names = {
            n for doc in raw for n, o in doc if o in ("shared/boinc_app", "vbox_job.xml")
        }
        counts = {n: sum(n in dict(doc) for doc in raw) for n in shared_names}
        common = [n for n, c in counts.items() if c == 5]
        assert len(common) == 2
        assert all(dbench.project.download_path(n).exists() for n in common)


def test_layout_agrees_with_dir_hier_path(dbench: Bench) -> None:
    with dbench.sweep(_spec("layout", "x", "fast")) as sweep:
        layout = read_layout(sweep._context())
    assert layout == ServerLayout(str(dbench.project.download_dir), dbench.project.fanout)
    for name in ("params_0123456789abcdef0123456789abcdef.json", "boinc_app_x", "a"):
        out = subprocess.run(
            [str(dbench.project.root / "bin" / "dir_hier_path"), name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert layout.path(name) == out


@pytest.mark.slow
def test_a_failed_multi_row_insert_is_resumed(dbench: Bench, busybox_image: str) -> None:
    spec_data = _spec("resume", busybox_image, "fast", n=4)
    with dbench.sweep(spec_data) as sweep:
        spec = sweep.spec
        ctx = sweep._context()
        sweep.record  # noqa: B018 - registers the sweep
        wus = list(plan(spec))
        create_fast(ctx, spec, wus[:1])  # the stock function stages the image
        # Another submitter creates one of the chunk's names behind the pre-check's back:
        # create_work's multi-row INSERT then fails as a whole on the duplicate name.
        create_fast(ctx, spec, [wus[5]])
        outputs = create_fast(ctx, spec, wus[1:])
    assert any("exited 1" in o for o in outputs), outputs
    names = sorted(_rows(dbench, "resume_v1_"))
    assert len(names) == 8 == len(set(names))
    _all_staged_are_referenced(dbench)


_SUBMITTER = """
import json, sys
from pipeline.api import Sweep
from pipeline.config import AppConfig, DbConfig, ServerConfig
from pipeline.settings import Settings
from pipeline.spec import SweepSpec
a = json.loads(sys.argv[1])
server = ServerConfig(name="emulated", transport=a["transport"], results=a["results"],
                      boinc_db=DbConfig(url=a["db"]), mode="fast", python=a["python"],
                      apps={"boinc2docker": AppConfig(cushion=5000)})
settings = Settings(state_url=a["state"], store_root=a["store"])
with Sweep(SweepSpec.model_validate(a["spec"]), server=server, settings=settings) as s:
    s.submit()
"""


def _count(bench: Bench, prefix: str) -> int:
    wu = boinc.workunit
    with bench.project.engine().connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(wu.c.name.like(prefix + "%"))
            ).scalar_one()
        )


@pytest.mark.slow
def test_kill_9_mid_chunk_then_rerun(dbench: Bench, busybox_image: str) -> None:
    # 1,600 workunits in one chunk: create_work flushes its multi-row INSERTs every
    # ~1 MB, so the submitter can be killed with some rows in and others not.
    spec = _spec(
        "killed",
        busybox_image,
        "fast",
        n=400,
        parameters={"grid": {"x": list(range(400)), "y": [2, 5, 7, 9], "label": ["a"]}},
        submit={"mode": "fast", "chunk_size": 2000},
    )
    dbench.server = dbench.server.model_copy(
        update={"apps": {"boinc2docker": AppConfig(cushion=5000)}}
    )
    cfg = dbench.server
    args = json.dumps(
        {
            "transport": cfg.transport,
            "results": cfg.results,
            "db": cfg.boinc_db.url,
            "python": cfg.python,
            "spec": spec,
            "state": dbench.settings.state_url,
            "store": dbench.settings.store_root,
        }
    )
    mid = False
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _SUBMITTER, args], start_new_session=True)
        deadline = time.monotonic() + 120
        seen = 0
        while proc.poll() is None and time.monotonic() < deadline:
            seen = _count(dbench, "killed_v1_")
            if seen > 1:
                break
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        after = _count(dbench, "killed_v1_")
        if 1 < after < 1600:
            mid = True
            break
    assert mid, "the submitter was never caught between two INSERT statements"
    with dbench.sweep(spec) as sweep:
        sweep.submit()
        names = list(_rows(dbench, "killed_v1_"))
        assert len(names) == 1600 == len(set(names))
        attempts = sweep.state.attempts_of(sweep.record.id)
        assert len(attempts) == 1600
        assert all(a.submitted_at is not None and a.wu_id for a in attempts)
    _all_staged_are_referenced(dbench)
