"""Benchmark the Celery workers against the same sweep run in process, on the emulator.

The pipeline's own work on a sweep is its submission and its harvest; the
volunteers' computing in between is the same whoever drives the pipeline. So:

1. **submission**: for each driver, a fresh emulated project and state
   database, and the whole sweep submitted (cushion = N): in process with
   ``Sweep.submit()``, through Celery with ``submit_async`` then waiting until
   every workunit is confirmed in the state database;
2. **harvest**: the sweep is computed once by the emulator's daemons; then for
   each driver the state database and store are reset to that moment and every
   result is harvested: ``Sweep.harvest()`` in process, ``harvest_async`` (plan
   plus a group of chunk tasks) through Celery.

Drivers: in process; Celery with one worker process; Celery with two
(``--concurrency 2``). Redis is a private ``redis-server``; the state database
is SQLite. Prints points/s per phase and the overhead of Celery against the
in-process figure measured in the same run (target: under 20% at one worker).

    python bench/workers.py [--n 10000] [--chunk 200]

Submission into the emulator in batch mode costs one emulated ``bin/create_work``
process per workunit (0.5-2 s each on a loaded 2-core machine), so large N
takes hours here; the figures in bench/README.md say which N was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.api import Sweep  # noqa: E402
from pipeline.config import DbConfig, ServerConfig  # noqa: E402
from pipeline.emulator import Daemons, Project  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.spec import SweepSpec  # noqa: E402
from pipeline.state import StateDB  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SERVER = "bench"


def spec(n: int, chunk: int) -> dict[str, Any]:
    """A grid of ``n`` points (n/10 x 10) whose job writes ``z = x * y``."""
    return {
        "name": "wbench",
        "image": "boinc-pipeline-test/host:latest",
        "command": [
            "sh",
            "-c",
            "mkdir -p /root/shared/results && echo z=$(({x} * {y})) > /root/shared/results/out.txt",
        ],
        "parameters": {"grid": {"x": list(range(n // 10)), "y": list(range(10))}},
        "outputs": [{"file": "out.txt", "kind": "keyvalue"}],
        "submit": {"chunk_size": chunk},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class Setup:
    """One emulated project, its server config file and a state database."""

    def __init__(self, tmp: Path, n: int) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True)
        self.project = Project.init(tmp / "project", None, tmp / "results", image_mode="host")
        self.servers = tmp / "servers"
        self.servers.mkdir()
        self.config = ServerConfig(
            name=SERVER,
            transport=f"local://{self.project.root}",
            results=f"local://{self.project.results_dir}",
            boinc_db=DbConfig(url=self.project.db_url),
            mode="batch",  # fast mode needs the emulator's docker image mode
            python="python3",
            apps={"boinc2docker": {"cushion": 2 * n}},  # type: ignore[dict-item]
        )
        data = self.config.model_dump(mode="json", exclude_none=True)
        (self.servers / f"{SERVER}.yaml").write_text(yaml.safe_dump(data))
        self.state_url = f"sqlite:///{tmp / 'state.sqlite'}"
        self.store = tmp / "store"

    def settings(self) -> Settings:
        return Settings(self.state_url, str(self.store), str(self.servers))

    def counts(self) -> dict[str, int]:
        with StateDB(self.state_url) as state:
            try:
                return state.point_counts(state.get_sweep("wbench").id)
            except Exception:
                return {}

    def confirmed(self) -> int:
        with StateDB(self.state_url) as state:
            try:
                rec = state.get_sweep("wbench")
            except Exception:
                return 0
            return sum(a.submitted_at is not None for a in state.attempts_of(rec.id))


@contextlib.contextmanager
def celery(setup: Setup, redis_url: str, concurrency: int, chunk: int) -> Iterator[dict[str, str]]:
    """Run one ``celery worker`` with ``concurrency`` processes; yield its environment."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "BOINC_PIPELINE_BROKER": redis_url,
            "BOINC_PIPELINE_STATE": setup.state_url,
            "BOINC_PIPELINE_STORE": str(setup.store),
            "BOINC_PIPELINE_SERVERS": str(setup.servers),
            "BOINC_PIPELINE_HARVEST_CHUNK": str(chunk),
        }
    )
    log = (setup.tmp / f"worker-{concurrency}.log").open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "--loglevel", "WARNING",
         "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        env=env, cwd=setup.tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        ping = [str(VENV_BIN / "celery"), "-A", "workers.app", "inspect", "ping", "-t", "1"]
        _wait(
            lambda: subprocess.run(ping, env=env, capture_output=True, check=False).returncode == 0,
            120,
            "the worker to answer",
        )
        yield env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def _enqueue(env: dict[str, str], call: str) -> None:
    code = f"from workers.enqueue import submit_async, harvest_async; {call}"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def submit_phase(tmp: Path, n: int, chunk: int, driver: str, redis_url: str) -> float:
    """Seconds to submit the whole sweep with one driver, on a fresh project."""
    setup = Setup(tmp, n)
    sweep_spec = spec(n, chunk)
    if driver == "in process":
        t0 = time.perf_counter()
        with Sweep(
            SweepSpec.model_validate(sweep_spec), server=SERVER, settings=setup.settings()
        ) as sw:
            sw.submit()
        seconds = time.perf_counter() - t0
    else:
        path = tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(sweep_spec))
        with celery(setup, redis_url, int(driver[-1]), chunk) as env:
            t0 = time.perf_counter()
            _enqueue(env, f"submit_async({str(path)!r}, {SERVER!r})")
            _wait(lambda: setup.confirmed() >= n, 3600, "every workunit")
            seconds = time.perf_counter() - t0
    assert setup.confirmed() == n
    setup.project.close()
    return seconds


def computed(tmp: Path, n: int, chunk: int) -> Setup:
    """A project where the sweep was submitted and computed by the emulator's daemons."""
    setup = Setup(tmp, n)
    with Sweep(
        SweepSpec.model_validate(spec(n, chunk)), server=SERVER, settings=setup.settings()
    ) as sw:
        sw.submit()
    t0 = time.perf_counter()
    daemons = Daemons(setup.project, hosts=16)
    daemons.run(until=lambda: _all_done(setup, n))
    print(f"  (emulator computed {n} workunits in {time.perf_counter() - t0:.0f} s)", flush=True)
    with Sweep.open("wbench", settings=setup.settings()) as sw:
        assert sw.track().counts == {"done": n}
    shutil.copy(tmp / "state.sqlite", tmp / "state.snapshot")
    return setup


_last_check = [0.0]


def _all_done(setup: Setup, n: int) -> bool:
    if time.monotonic() - _last_check[0] < 1.0:
        return False
    _last_check[0] = time.monotonic()
    import sqlalchemy as sa

    from pipeline import boinc

    engine = sa.create_engine(setup.project.db_url)
    try:
        with engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count()).where(boinc.workunit.c.assimilate_state != 2)
            ).scalar_one()
    finally:
        engine.dispose()
    return int(left) == 0


def harvest_phase(setup: Setup, n: int, chunk: int, driver: str, redis_url: str) -> float:
    """Seconds to harvest every result with one driver, from the computed snapshot."""
    for suffix in ("", "-wal", "-shm"):
        (setup.tmp / f"state.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(setup.tmp / "state.snapshot", setup.tmp / "state.sqlite")
    shutil.rmtree(setup.store, ignore_errors=True)
    if driver == "in process":
        t0 = time.perf_counter()
        with Sweep.open("wbench", settings=setup.settings()) as sw:
            sw.harvest(chunk_size=chunk)
        seconds = time.perf_counter() - t0
    else:
        with celery(setup, redis_url, int(driver[-1]), chunk) as env:
            t0 = time.perf_counter()
            _enqueue(env, "harvest_async('wbench')")
            _wait(lambda: setup.counts() == {"harvested": n}, 3600, "every point harvested")
            seconds = time.perf_counter() - t0
    assert setup.counts() == {"harvested": n}
    with Sweep.open("wbench", settings=setup.settings()) as sw:
        assert len(sw.results()) == n
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="points (a multiple of 10)")
    parser.add_argument("--chunk", type=int, default=200, help="submission and harvest chunk")
    args = parser.parse_args()
    n, chunk = args.n, args.chunk
    drivers = ["in process", "celery x1", "celery x2"]
    port = _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{port}/0"
    print(f"workers bench: {n} points, chunks of {chunk}, load {os.getloadavg()[0]:.1f}")
    try:
        with tempfile.TemporaryDirectory(prefix="bp-wbench-") as tmp:
            submit = {
                d: submit_phase(Path(tmp) / f"s{i}", n, chunk, d, redis_url)
                for i, d in enumerate(drivers)
            }
            setup = computed(Path(tmp) / "h", n, chunk)
            harvest = {d: harvest_phase(setup, n, chunk, d, redis_url) for d in drivers}
            setup.project.close()
    finally:
        redis.terminate()
        redis.wait()
    base = submit["in process"] + harvest["in process"]
    header = ("driver", "submit s", "pts/s", "harvest s", "pts/s", "both pts/s", "overhead")
    print("{:<12} {:>9} {:>7} {:>10} {:>7} {:>11} {:>9}".format(*header))
    for d in drivers:
        both = submit[d] + harvest[d]
        print(
            f"{d:<12} {submit[d]:>9.1f} {n / submit[d]:>7.2f} {harvest[d]:>10.2f} "
            f"{n / harvest[d]:>7.1f} {n / both:>11.2f} {(both / base - 1) * 100:>8.1f}%"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
