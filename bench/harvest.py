"""Benchmark harvesting: 5,000 small result archives through the harvest stage, and one big one.

Usage::

    python bench/harvest.py [--archives 5000] [--rows 50] [--chunk-size 200]
                            [--transports local,ssh,docker] [--big-mib 128] [--no-big]

Setup, in a temporary folder: a sweep of ``--archives`` points (``x`` =
0..N-1) with outputs ``out.csv`` (csv, ``--rows`` rows of four columns) and
``summary.json`` (json, one row), registered in a SQLite state database as
``pipeline.submit`` leaves it (points, attempts confirmed); an emulated BOINC
database (SQLite, ``pipeline.boinc.metadata``) whose workunits and canonical
results are as the assimilator leaves them (canonical_resultid > 0, error_mask 0,
assimilate_state 2; result server_state 5, outcome 1); and one result archive
per point at ``<results>/boinc2docker/<today>/<wu>_0_r<digits>_0.tgz``, a gzip
tar of relative members with no ``results/`` prefix, as ``cd results && tar czf
results.tgz *`` writes it in the VM (written with :mod:`tarfile`, GNU format,
gzip level 6, which is what GNU tar and gzip produce by default).

Legs, each harvesting every archive into a fresh state database copy and store:

- **bare**: a loop reading the same archives with ``tarfile`` + pyarrow (CSV
  reader, ``json.loads``), adding the same parameter and metadata columns, and
  writing one Parquet file — no ledger, no safety limits;
- **local**: ``pipeline.harvest.harvest_sweep`` through ``local://`` (target:
  at least 80% of bare);
- **ssh**: through ``ssh://`` against a throwaway OpenSSH server on 127.0.0.1
  (``tests/transport/sshd.py``; needs root) — target: at least 50% of local;
- **docker**: through ``docker://`` into a throwaway busybox container with the
  results folder bind-mounted (the tests' local busybox image) — target: at
  least 50% of local;
- **big**: one archive of about ``--big-mib`` MiB (BOINC's 128 MiB upload
  limit) whose CSV expands to about 1.5 GB, harvested in a child process with
  raised ``ArchiveLimits``; its peak RSS (``VmHWM`` on Linux, else
  ``ru_maxrss``) is printed, target under 300 MB.

A leg that cannot be set up here is reported as not measured, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import pyarrow.parquet as pq  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from pipeline import boinc  # noqa: E402
from pipeline.archive import ArchiveLimits  # noqa: E402
from pipeline.config import DbConfig, ServerConfig  # noqa: E402
from pipeline.emulator.records import assimilated_success  # noqa: E402
from pipeline.harvest import harvest_sweep  # noqa: E402
from pipeline.plan import wu_name  # noqa: E402
from pipeline.server import Server  # noqa: E402
from pipeline.spec import SweepSpec  # noqa: E402
from pipeline.state import StateDB  # noqa: E402
from pipeline.store import ResultStore  # noqa: E402
from pipeline.submit import register_sweep  # noqa: E402

APP = "boinc2docker"
GiB = 1024**3
MiB = 1024**2


def load() -> str:
    """The load averages, for the output."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def spec_for(n: int, name: str = "hv") -> SweepSpec:
    """The benchmark sweep: ``x`` = 0..n-1, a CSV and a JSON output."""
    return SweepSpec.model_validate(
        {
            "name": name,
            "image": "bench/harvest:latest",
            "command": ["run", "--x={x}"],
            "parameters": {"grid": {"x": list(range(n))}},
            "outputs": [
                {"file": "out.csv", "kind": "csv"},
                {"file": "summary.json", "kind": "json"},
            ],
        }
    )


def tgz(members: dict[str, bytes]) -> bytes:
    """A gzip tar of relative members, as ``tar czf`` writes it."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def small_archive(x: int, rows: int) -> bytes:
    """One point's result archive: a CSV of ``rows`` rows and a small JSON."""
    lines = ["step,a,b,label"] + [
        f"{i},{x * 0.001 + i * 0.5:.6f},{(x * 7 + i) % 1000},s{i % 7}" for i in range(rows)
    ]
    csv = ("\n".join(lines) + "\n").encode()
    summary = json.dumps({"chi2": x * 0.25, "converged": x % 3 != 0, "iterations": x % 17})
    return tgz({"out.csv": csv, "summary.json": summary.encode()})


class Setup:
    """The sweep, its databases and its archives in one folder."""

    def __init__(self, folder: Path, n: int, rows: int, big: Path | None = None) -> None:
        self.folder = folder
        self.spec = spec_for(n)
        self.results = folder / "results"
        self.boinc_url = f"sqlite:///{folder / 'boinc.sqlite'}"
        self.state_template = folder / "state-template.sqlite"
        state = StateDB(f"sqlite:///{self.state_template}")
        sweep = register_sweep(state, None, self.spec)
        points = state.points_in_state(sweep.id, ["planned"])
        planned = [(pid, 1, wu_name(sweep.name, sweep.version, pid, 1)) for pid, _a, _p in points]
        state.reserve_attempts(sweep.id, planned)
        engine = sa.create_engine(self.boinc_url)
        boinc.metadata.create_all(engine)
        now = int(time.time())
        day = dt.datetime.fromtimestamp(now, dt.UTC).date().isoformat()
        folder_day = self.results / APP / day
        folder_day.mkdir(parents=True)
        wus, results = [], []
        self.bytes = 0
        for i, (_pid, _att, wu) in enumerate(planned, 1):
            params = points[i - 1][2]
            wu_row, result_row = assimilated_success(i, wu, now, hostid=1 + i % 50)
            wus.append(wu_row)
            results.append(result_row)
            path = folder_day / f"{wu}_0_r{1000000 + i}_0.tgz"
            if big is not None:
                shutil.copy(big, path)
            else:
                path.write_bytes(small_archive(int(params["x"]), rows))
            self.bytes += path.stat().st_size
        with engine.begin() as conn:
            conn.execute(sa.insert(boinc.workunit), wus)
            conn.execute(sa.insert(boinc.result), results)
        engine.dispose()
        state.confirm_attempts({wu: i for i, (_p, _a, wu) in enumerate(planned, 1)})
        state.close()
        self.points = {wu: (pid, points[i][2]) for i, (pid, _a, wu) in enumerate(planned)}
        self.day_folder = folder_day

    def harvest(
        self, leg: str, results_url: str, chunk_size: int, limits: ArchiveLimits | None = None
    ) -> tuple[float, Any, int]:
        """Harvest everything through ``results_url`` into a fresh state copy and store."""
        state_file = self.folder / f"state-{leg}.sqlite"
        shutil.copy(self.state_template, state_file)
        store_root = self.folder / f"store-{leg}"
        config = ServerConfig(
            name="bench",
            transport=f"local://{self.folder}",
            results=results_url,
            boinc_db=DbConfig(url=self.boinc_url),
        )
        state = StateDB(f"sqlite:///{state_file}")
        sweep = state.get_sweep(self.spec.name, self.spec.version)
        store = ResultStore(state, str(store_root))
        kwargs: dict[str, Any] = {"chunk_size": chunk_size}
        if limits is not None:
            kwargs["limits"] = limits
        with Server(config) as server:
            t0 = time.perf_counter()
            report = harvest_sweep(state, server, store, self.spec, sweep, **kwargs)
            secs = time.perf_counter() - t0
        # Rows counted from the parts' footers: reading them back would dominate the
        # big leg's peak memory, which must be the harvest's own.
        rows = sum(pq.read_metadata(path).num_rows for path in store.part_paths(self.spec.name))
        state.close()
        return secs, report, rows


def bare_loop(setup: Setup, out: Path) -> tuple[float, int]:
    """Read every archive with tarfile + pyarrow, add the same columns, write one Parquet file."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    tables = []
    harvested_at = time.time()
    for path in sorted(setup.day_folder.iterdir()):
        wu = path.name.rsplit("_", 3)[0]
        pid, params = setup.points[wu]
        with tarfile.open(path, "r:gz") as tf:
            csv_file = tf.extractfile("out.csv")
            json_file = tf.extractfile("summary.json")
            assert csv_file is not None
            assert json_file is not None
            table = pacsv.read_csv(csv_file)
            summary = json.loads(json_file.read())
        n = table.num_rows
        for key, value in summary.items():
            table = table.append_column(key, pa.array([value] * n))
        for key, value in params.items():
            table = table.append_column(f"p.{key}", pa.array([value] * n))
        meta = {
            "sweep": setup.spec.name,
            "version": setup.spec.version,
            "point_id": pid,
            "attempt": 1,
            "wu_name": wu,
            "result_name": f"{wu}_0",
            "hostid": 1,
            "cpu_time": 100.0,
            "elapsed_time": 110.0,
            "received_time": 0,
            "harvested_at": harvested_at,
            "source_file": str(path),
        }
        for key, value in meta.items():
            table = table.append_column(key, pa.array([value] * n))
        tables.append(table)
    merged = pa.concat_tables(tables)
    pq.write_table(merged, out, compression="zstd")
    return time.perf_counter() - t0, merged.num_rows


@contextlib.contextmanager
def ssh_results(results: Path) -> Iterator[str]:
    """A throwaway sshd; yields the ssh:// URL of the results folder."""
    from transport.sshd import sshd_server

    gen = sshd_server.__wrapped__()
    server = next(gen)
    try:
        yield server.url(str(results))
    finally:
        with contextlib.suppress(StopIteration):
            next(gen)


@contextlib.contextmanager
def docker_results(results: Path) -> Iterator[str]:
    """A throwaway busybox container with the results folder mounted at /results."""
    import docker
    from conftest import busybox_image, random_name

    client = docker.from_env()
    image = busybox_image.__wrapped__(client)
    container = client.containers.run(
        image,
        ["sleep", "3600"],
        name=random_name("bp_bench_harvest"),
        detach=True,
        network_mode="none",
        init=True,
        volumes={str(results): {"bind": "/results", "mode": "ro"}},
    )
    try:
        yield f"docker://{container.name}/results"
    finally:
        container.remove(force=True)
        client.close()


def leg(
    setup: Setup, name: str, url: str, chunk: int, expect: int, base: float, base_name: str
) -> float:
    """Harvest through one transport and print its figures; return archives per second."""
    secs, report, rows = setup.harvest(name, url, chunk)
    n = report.ingested
    ok = rows == expect and n == len(setup.points) and report.lost == 0 and not report.bad_output
    rate = n / secs
    print(
        f"  {name:<7} {secs:7.2f} s  {rate:8.1f} archives/s  {rows:,} rows  "
        f"{rate / base:5.2f}x {base_name}  {'ok' if ok else f'WRONG {report.as_dict()}'}"
    )
    return rate


def run_small(args: argparse.Namespace) -> None:
    """The 5,000-archive legs."""
    with tempfile.TemporaryDirectory(prefix="bp-bench-harvest-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        setup = Setup(folder, args.archives, args.rows)
        print(
            f"setup: {args.archives:,} archives ({setup.bytes / MiB:.1f} MiB) in "
            f"{time.perf_counter() - t0:.1f} s; load average {load()}"
        )
        expect = args.archives * args.rows
        os.sync()
        bare_secs, bare_rows = bare_loop(setup, folder / "bare.parquet")
        bare = args.archives / bare_secs
        print(f"  bare    {bare_secs:7.2f} s  {bare:8.1f} archives/s  {bare_rows:,} rows")
        local = leg(
            setup, "local", f"local://{setup.results}", args.chunk_size, expect, bare, "bare"
        )
        print(f"  local/bare = {local / bare:.2f} (target >= 0.80); load average {load()}")
        for name, opener in (("ssh", ssh_results), ("docker", docker_results)):
            if name not in args.transports:
                continue
            try:
                with opener(setup.results) as url:
                    rate = leg(setup, name, url, args.chunk_size, expect, local, "local")
                print(f"  {name}/local = {rate / local:.2f} (target >= 0.50); load {load()}")
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                print(f"  {name}: not measured ({type(exc).__name__}: {exc})")


def make_big(path: Path, target_mib: int) -> int:
    """Write a result archive of about ``target_mib`` MiB whose CSV is about 11 times larger.

    The CSV is one block of rows (a step counter, a smooth value, a noisy
    digit pair and a label) repeated until the size is reached; ``tar czf``
    (gzip -6) compresses it about 11 times, like a numerical table.
    """
    import random

    work = path.parent / "big-src"
    work.mkdir()
    rnd = random.Random(1)
    rows = 100_000
    tail = "1.000000,0.000000,converged,model-a"
    block = "".join(
        f"{i},{0.5 * (i % 1000):.6f},0.{rnd.randrange(10)}00000,{tail}\n"
        for i in range(1_000_000, 1_000_000 + rows)
    ).encode()
    target = int(target_mib * MiB * 11.2)
    copies = max(1, target // len(block))
    with (work / "out.csv").open("wb") as f:
        f.write(b"step,a,b,c,d,status,model\n")
        for _ in range(copies):
            f.write(block)
    (work / "summary.json").write_text(json.dumps({"chi2": 1.5, "converged": True}))
    subprocess.run(
        ["tar", "czf", str(path), "-C", str(work), "out.csv", "summary.json"], check=True
    )
    shutil.rmtree(work)
    return rows * copies


def peak_rss_kib() -> int:
    """Return this process's peak resident set size in KiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` keeps
    across ``execve`` the RSS the parent had when it forked, so a child started
    after the small legs would report the parent's peak instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def big_child(folder: Path, big: Path) -> None:
    """In a child process: harvest the one big archive and print JSON with the peak RSS."""
    before = peak_rss_kib()
    setup = Setup(folder, 1, 0, big=big)
    limits = ArchiveLimits(max_archive_bytes=4 * GiB, max_member_bytes=4 * GiB)
    import pyarrow  # noqa: F401  (imported before the baseline RSS is taken)

    base = peak_rss_kib()
    secs, report, rows = setup.harvest("big", f"local://{setup.results}", 1, limits)
    peak = peak_rss_kib()
    print(
        json.dumps(
            {
                "start_kib": before,
                "base_kib": base,
                "peak_kib": peak,
                "seconds": secs,
                "rows": rows,
                "report": report.as_dict(),
            }
        )
    )


def run_big(args: argparse.Namespace) -> None:
    """The one-big-archive leg, in a child process so its peak RSS is its own."""
    with tempfile.TemporaryDirectory(prefix="bp-bench-harvest-big-") as tmp:
        folder = Path(tmp)
        big = folder / "big.tgz"
        t0 = time.perf_counter()
        rows = make_big(big, args.big_mib)
        size = big.stat().st_size
        print(
            f"big archive: {size / MiB:.1f} MiB compressed, {rows:,} CSV rows, built in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        (folder / "h").mkdir()
        proc = subprocess.run(
            [sys.executable, __file__, "--big-child", str(folder / "h"), str(big)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"  big: FAILED\n{proc.stderr[-3000:]}")
            return
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        peak = out["peak_kib"] / 1024
        print(
            f"  big: {out['seconds']:.1f} s, {out['rows']:,} rows, "
            f"{size / MiB / out['seconds']:.1f} MiB/s compressed; peak RSS {peak:.0f} MB "
            f"(after imports {out['base_kib'] / 1024:.0f} MB) — target < 300 MB: "
            f"{'met' if peak < 300 else 'NOT met'}; ingested={out['report']['ingested']} "
            f"bad={out['report']['bad_output']}; load average {load()}"
        )


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--big-child":
        big_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archives", type=int, default=5000)
    ap.add_argument("--rows", type=int, default=50, help="CSV rows per archive")
    ap.add_argument("--chunk-size", type=int, default=200)
    ap.add_argument("--transports", default="local,ssh,docker")
    ap.add_argument("--big-mib", type=int, default=128, help="size of the big archive")
    ap.add_argument("--no-big", action="store_true", help="skip the big-archive leg")
    ap.add_argument("--no-small", action="store_true", help="skip the 5,000-archive legs")
    args = ap.parse_args()
    if args.archives < 1 or args.rows < 1:
        ap.error("--archives and --rows must be positive")
    print(f"harvest benchmark; load average at start {load()}")
    if not args.no_small:
        run_small(args)
    if not args.no_big:
        run_big(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
