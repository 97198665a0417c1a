"""Benchmark the emulator: bulk creation with ``create_work --stdin`` and the full host-mode cycle.

Prints workunits/s for creation (MariaDB when reachable, and SQLite) and for the
full cycle (creation to assimilation) in host mode, plus a smaller container-mode
run when a Docker engine and the test busybox image are present. Targets:
creation >= 2,000 workunits/s into MariaDB; 10,000 workunits through the full
host-mode cycle in under 2 minutes on 2 cores. Beside each cycle's wall time it
prints the load average and the CPU seconds per workunit of the daemon process and
of the jobs (less noisy than wall time on a shared machine), and the wall time an
idle machine would need from them.

    python bench/emulator.py [--n 10000] [--hosts 16] [--parallel 8] [--containers 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from scratch_db import create_mariadb, drop

from pipeline import boinc
from pipeline.emulator import Daemons, Project

TEMPLATE = """<input_template>
<file_info>
    <number>0</number>
    <sticky/>
    <no_delete/>
</file_info>
<file_info>
    <number>1</number>
    <sticky/>
    <no_delete/>
</file_info>
<workunit>
    <file_ref>
        <file_number>0</file_number>
        <open_name>shared/boinc_app</open_name>
        <copy_file/>
    </file_ref>
    <file_ref>
        <file_number>1</file_number>
        <open_name>vbox_job.xml</open_name>
        <copy_file/>
    </file_ref>
</workunit>
</input_template>
"""
APP = "#!/bin/sh\nset -e\necho 42 > /root/shared/results/out.txt\n"


def _setup(root: Path, db_url: str | None) -> Project:
    project = Project.init(root, db_url, root / "results", image_mode="host")
    (project.root / "templates" / "bench_in").write_text(TEMPLATE)
    for name, data in (("bench_app", APP), ("bench_vbox.xml", "<vbox_job/>\n")):
        path = project.download_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
    return project


def create(project: Project, n: int, prefix: str) -> float:
    """Create n workunits with one create_work --stdin process; return seconds taken."""
    lines = "".join(f"--wu_name {prefix}_{i} bench_app bench_vbox.xml\n" for i in range(n))
    argv = [
        str(project.root / "bin" / "create_work"),
        "--appname", "boinc2docker",
        "--wu_template", "templates/bench_in",
        "--min_quorum", "1", "--target_nresults", "1",
        "--stdin",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(argv, input=lines, text=True, check=True, cwd=project.root)
    return time.perf_counter() - t0


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its waited-for children, so far."""
    out = []
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        out.append(usage.ru_utime + usage.ru_stime)
    return out[0], out[1]


def _load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def cycle(project: Project, n: int, hosts: int, parallel: int = 0) -> tuple[float, float, float]:
    """Run the daemons until every workunit is assimilated.

    Returns wall seconds, CPU seconds of the daemon process, CPU seconds of the jobs.
    """
    daemons = Daemons(project, hosts=hosts, parallel=parallel)
    daemons.clock.advance(1)
    engine = project.engine()

    def finished() -> bool:
        with engine.connect() as conn:
            done = conn.execute(
                sa.select(sa.func.count()).where(
                    boinc.workunit.c.assimilate_state == int(boinc.AssimilateState.DONE)
                )
            ).scalar_one()
        return int(done) >= n

    t0 = time.perf_counter()
    c0 = _cpu()
    checks = [0.0]

    def until() -> bool:
        now = time.perf_counter()
        if now - checks[0] < 0.5:
            return False
        checks[0] = now
        return finished()

    daemons.run(until=until, timeout=1800, idle_sleep=0.05)
    c1 = _cpu()
    return time.perf_counter() - t0, c1[0] - c0[0], c1[1] - c0[1]


def _report_cycle(label: str, n: int, wall: float, own: float, jobs: float, cores: int) -> None:
    """Print the cycle's rate and CPU per workunit, and the idle-machine estimate.

    On an idle machine the run takes at least the total CPU time spread over every
    core, and at least the daemon process's own CPU time (it is one thread).
    """
    idle = max((own + jobs) / cores, own)
    print(
        f"full host-mode cycle, {label}: {n / wall:,.0f} workunits/s ({wall:.1f} s, {_load()}); "
        f"CPU per workunit {(own + jobs) / n * 1000:.2f} ms "
        f"(daemon {own / n * 1000:.2f} + jobs {jobs / n * 1000:.2f}); "
        f"idle {cores}-core estimate {n / idle:,.0f} workunits/s ({idle:.1f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8, help="jobs at once (0: 2 per CPU)")
    parser.add_argument("--containers", type=int, default=5)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"emulator bench: {args.n} workunits, {cores} CPUs, {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        maria = create_mariadb("bench_emu")
        try:
            if maria:
                p = _setup(Path(tmp) / "maria", maria)
                secs = create(p, args.n, "m")
                print(
                    f"create_work --stdin, MariaDB: {args.n / secs:,.0f} workunits/s ({secs:.2f} s)"
                )
                figures = cycle(p, args.n, args.hosts, args.parallel)
                _report_cycle("MariaDB", args.n, *figures, cores)
                p.close()
            else:
                print("MariaDB not reachable: skipped")
            p = _setup(Path(tmp) / "lite", None)
            secs = create(p, args.n, "s")
            print(f"create_work --stdin, SQLite: {args.n / secs:,.0f} workunits/s ({secs:.2f} s)")
            figures = cycle(p, args.n, args.hosts, args.parallel)
            _report_cycle("SQLite", args.n, *figures, cores)
            p.close()
        finally:
            if maria:
                drop(maria)
        if args.containers:
            _containers(Path(tmp) / "ctr", args.containers)
    return 0


def _containers(root: Path, n: int) -> None:
    image = "boinc-pipeline-test/busybox:latest"
    check = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if check.returncode != 0:
        print(f"container mode: image {image} not present (run the tests once): skipped")
        return
    project = Project.init(root, None, root / "results", image_mode="docker")
    script = str(project.root / "bin" / "boinc2docker_create_work.py")
    t0 = time.perf_counter()
    for i in range(n):
        subprocess.run(
            [script, "--wu_name", f"c_{i}", "--min_quorum", "1", "--target_nresults", "1",
             image, "sh", "-c", "echo 42 > /root/shared/results/out.txt"],
            check=True, capture_output=True, cwd=project.root,
        )  # fmt: skip
    made = time.perf_counter() - t0
    secs = cycle(project, n, hosts=2)[0]
    print(
        f"container mode: boinc2docker_create_work.py {n / made:.1f} workunits/s; "
        f"cycle {n / secs:.2f} workunits/s ({secs:.1f} s for {n})"
    )
    project.close()


if __name__ == "__main__":
    sys.exit(main())
