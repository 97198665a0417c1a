"""Benchmark the Celery workers against the same sweep run in process, on the emulator.

The pipeline's own work on a sweep is its submission and its harvest; the
volunteers' computing in between is the same whoever drives the pipeline. So:

1. **submission**: for each driver, a fresh emulated project and state
   database, and the whole sweep submitted in ``fast`` mode (cushion = 2N, so
   one top-up creates everything): in process with ``Sweep.submit()``; through
   Celery by sending the ``submit`` task (what ``submit_async`` sends) and
   waiting for its result;
2. **harvest**: the sweep is computed once by the emulator's daemons (host
   image mode, so the volunteers need no containers); then for each driver the
   state database and store are reset to that moment and every result is
   harvested: ``Sweep.harvest()`` in process; through Celery by sending the
   ``harvest`` task (the plan, which fans out a group of chunk tasks) and
   waiting until every point is harvested.

Drivers: in process; Celery with one worker process; Celery with two
(``--concurrency 2``). Redis is a private ``redis-server``; the state database
is SQLite. Each Celery measurement starts a fresh worker and waits until it
answers a ping before the clock starts; its pool processes open their
connections on their first tasks, inside the timing. Messages are sent from
this process (no interpreter start-up is timed). A Celery harvest ends at the
last chunk's ``harvest`` event in the state database; this process checks for
it every 0.2 s with one COUNT query, so the check neither delays nor loads the
workers much.

The machine is shared, and its load drifts more between measurements than the
drivers differ, so every phase is measured ``--rounds`` times per driver, the
drivers' order rotating from round to round, after one untimed submission.
Prints the median seconds and points/s per phase and driver, the overhead of
Celery as the median of its same-round ratios to in process (target: under 20%
at one worker), and, from the workers' logs, how many tasks ran, the time spent
inside them and the time the pool processes waited between tasks.

    python bench/workers.py [--n 10000] [--chunk 200] [--submit-chunk 1000] [--rounds 3]
                            [--computed DIR] [--phases submit,harvest]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.api import Sweep  # noqa: E402
from pipeline.config import DbConfig, ServerConfig  # noqa: E402
from pipeline.emulator import Daemons, Project  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.spec import SweepSpec  # noqa: E402
from pipeline.state import StateDB, events, points  # noqa: E402
from workers.app import make_app  # noqa: E402
from workers.enqueue import forget  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SERVER = "bench"
DRIVERS = ("in process", "celery x1", "celery x2")
_TASK_DONE = re.compile(
    r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/([\w-]+)\] "
    r"Task (boinc_pipeline\.\w+)\[[^]]*\] succeeded in ([0-9.e-]+)s"
)


def spec(n: int, chunk: int) -> dict[str, Any]:
    """A grid of ``n`` points (n/10 x 10) whose job writes ``z = x * y``, submitted in fast mode."""
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
        "submit": {"chunk_size": chunk, "mode": "fast"},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


_TICK = os.sysconf("SC_CLK_TCK")
#: The private redis-server's pid: its CPU counts as Celery's.
REDIS_PID: list[int] = []


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system, theirs and their waited-for children's) of these processes."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class Setup:
    """One emulated project (host image mode), its server config file and a state database."""

    def __init__(self, tmp: Path, n: int, reopen: bool = False) -> None:
        self.tmp = tmp
        self.servers = tmp / "servers"
        if reopen:
            self.project = Project.open(tmp / "project")
        else:
            tmp.mkdir(parents=True)
            self.project = Project.init(tmp / "project", None, tmp / "results", image_mode="host")
            self.servers.mkdir()
        self.config = ServerConfig(
            name=SERVER,
            transport=f"local://{self.project.root}",
            results=f"local://{self.project.results_dir}",
            boinc_db=DbConfig(url=self.project.db_url),
            mode="fast",
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


class Watch:
    """Cheap reads of the state database while the workers run: one engine, one query per look."""

    def __init__(self, state_url: str) -> None:
        self.engine = sa.create_engine(state_url)

    def harvested(self) -> int:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.count()).where(points.c.state == "harvested")
            return int(conn.execute(query).scalar_one())

    def last_event(self, kind: str) -> float:
        with self.engine.connect() as conn:
            query = sa.select(sa.func.max(events.c.at)).where(events.c.kind == kind)
            return float(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


class Tasks:
    """What the workers' log says: tasks run per name, seconds inside them, idle time between.

    A pool process's idle time is the time from the end of one of its tasks to
    the start of its next one (the log gives each task's end, to the
    millisecond, and its duration): the broker round trip and the hand-over
    from the worker's main process, paid once per task.
    """

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.idle = 0.0
        self.gaps = 0

    def read(self, log: Path) -> None:
        import datetime as dt

        spans: dict[str, list[tuple[float, float]]] = {}
        for stamp, process, name, seconds in _TASK_DONE.findall(log.read_text(errors="replace")):
            self.count[name] = self.count.get(name, 0) + 1
            self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)
            end = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            spans.setdefault(process, []).append((end - float(seconds), end))
        for runs in spans.values():
            runs.sort()
            for (_s0, end), (start, _e1) in itertools.pairwise(runs):
                self.idle += max(0.0, start - end)
                self.gaps += 1

    def summary(self) -> str:
        tasks = ", ".join(
            f"{name.split('.')[-1]} {self.count[name]} x {self.seconds[name]:.2f} s"
            for name in sorted(self.count)
        )
        return f"{tasks}; idle between tasks {self.idle:.2f} s over {self.gaps} gaps"


@contextlib.contextmanager
def celery(
    setup: Setup, redis_url: str, concurrency: int, chunk: int, tasks: Tasks
) -> Iterator[Callable[[], float]]:
    """Run one ``celery worker`` with ``concurrency`` processes; add its log to ``tasks``.

    Yields a function giving the CPU seconds used so far by the worker, its pool
    processes (and the programs they ran) and the private Redis.
    """
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
    env.pop("BOINC_PIPELINE_WORKERS_CONFIG", None)
    path = setup.tmp / f"worker-{concurrency}-{time.monotonic_ns()}.log"
    log = path.open("wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "workers.app", "worker", "--loglevel", "INFO",
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
        pids = [proc.pid, *_children(proc.pid), *REDIS_PID]
        yield lambda: cpu_seconds(pids)
    finally:
        time.sleep(0.5)  # the last task's log line
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        tasks.read(path)


def submit_phase(
    tmp: Path, n: int, chunk: int, driver: str, client: Any, tasks: Tasks | None
) -> tuple[float, float]:
    """Seconds and CPU seconds to submit the whole sweep with one driver, on a fresh project."""
    setup = Setup(tmp, n)
    sweep_spec = spec(n, chunk)
    me = [os.getpid()]
    if driver == "in process":
        c0, t0 = cpu_seconds(me), time.perf_counter()
        with Sweep(
            SweepSpec.model_validate(sweep_spec), server=SERVER, settings=setup.settings()
        ) as sw:
            sw.submit()
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(me) - c0
    else:
        with celery(
            setup, client.conf.broker_url, int(driver[-1]), chunk, tasks or Tasks()
        ) as worker_cpu:
            c0, t0 = worker_cpu(), time.perf_counter()
            # What workers.enqueue.submit_async sends for a spec file.
            body = SweepSpec.model_validate(sweep_spec).model_dump(mode="json")
            sent = client.send_task(
                "boinc_pipeline.submit", kwargs={"spec": body, "server": SERVER}
            )
            outcome = sent.get(timeout=3600)
            seconds, cpu = time.perf_counter() - t0, worker_cpu() - c0
            forget(sent)
            assert outcome["created"] == n, outcome
    assert setup.confirmed() == n
    setup.project.close()
    return seconds, cpu


def computed(tmp: Path, n: int, chunk: int) -> Setup:
    """A project where the sweep was submitted and computed by the emulator's daemons.

    A folder that holds one already (``--computed DIR`` of an earlier run) is reused.
    """
    if (tmp / "state.snapshot").is_file():
        setup = Setup(tmp, n, reopen=True)
        with Sweep.open("wbench", settings=setup.settings()) as sw:
            assert sw.spec.size == n, f"{tmp} holds a sweep of {sw.spec.size} points, not {n}"
        print(f"  (reusing the {n} workunits computed in {tmp})", flush=True)
        return setup
    setup = Setup(tmp, n)
    with Sweep(
        SweepSpec.model_validate(spec(n, chunk)), server=SERVER, settings=setup.settings()
    ) as sw:
        sw.submit()
    t0 = time.perf_counter()
    daemons = Daemons(setup.project, hosts=16)
    daemons.run(until=lambda: _all_done(setup, n), timeout=3600)
    print(
        f"  (emulator computed {n} workunits in {time.perf_counter() - t0:.0f} s, "
        f"load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    with Sweep.open("wbench", settings=setup.settings()) as sw:
        assert sw.track().counts == {"done": n}
    shutil.copy(tmp / "state.sqlite", tmp / "state.snapshot")
    return setup


_last_check = [0.0]


def _all_done(setup: Setup, n: int) -> bool:
    if time.monotonic() - _last_check[0] < 1.0:
        return False
    _last_check[0] = time.monotonic()
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


def harvest_phase(
    setup: Setup, n: int, chunk: int, driver: str, client: Any, tasks: Tasks | None
) -> tuple[float, float]:
    """Seconds and CPU seconds to harvest every result with one driver, from the snapshot."""
    for suffix in ("", "-wal", "-shm"):
        (setup.tmp / f"state.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(setup.tmp / "state.snapshot", setup.tmp / "state.sqlite")
    shutil.rmtree(setup.store, ignore_errors=True)
    me = [os.getpid()]
    if driver == "in process":
        c0, t0 = cpu_seconds(me), time.perf_counter()
        with Sweep.open("wbench", settings=setup.settings()) as sw:
            sw.harvest(chunk_size=chunk)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(me) - c0
    else:
        watch = Watch(setup.state_url)
        try:
            with celery(
                setup, client.conf.broker_url, int(driver[-1]), chunk, tasks or Tasks()
            ) as worker_cpu:
                c0, w0, t0 = worker_cpu(), time.time(), time.perf_counter()
                plan = client.send_task("boinc_pipeline.harvest", args=["wbench", None])
                assert plan.get(timeout=3600)["chunks"] == -(-n // chunk)
                forget(plan)
                _wait(lambda: watch.harvested() >= n, 3600, "every point harvested", every=0.2)
                cpu = worker_cpu() - c0
                # The last chunk's event, not the moment this loop happened to look.
                seconds = watch.last_event("harvest") - w0
                assert seconds <= time.perf_counter() - t0
        finally:
            watch.close()
    assert setup.counts() == {"harvested": n}
    with Sweep.open("wbench", settings=setup.settings()) as sw:
        assert len(sw.results()) == n
    return seconds, cpu


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="points (a multiple of 10)")
    parser.add_argument("--chunk", type=int, default=200, help="harvest chunk (results per task)")
    parser.add_argument(
        "--submit-chunk", type=int, default=1000, help="submission chunk (one create_work each)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurements per driver and phase")
    parser.add_argument(
        "--computed", metavar="DIR", help="keep the computed sweep in DIR, or reuse it from there"
    )
    parser.add_argument(
        "--phases", default="submit,harvest", help="which phases to run (submit, harvest)"
    )
    args = parser.parse_args()
    n, chunk, submit_chunk = args.n, args.chunk, args.submit_chunk
    phases = [p for p in ("submit", "harvest") if p in args.phases.split(",")]
    port = _free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    REDIS_PID.append(redis.pid)
    redis_url = f"redis://127.0.0.1:{port}/0"
    client = make_app(WorkerSettings(broker=redis_url))
    print(
        f"workers bench: {n} points, fast mode, submission chunks of {submit_chunk}, "
        f"harvest chunks of {chunk}, {args.rounds} rounds, load {_load()}",
        flush=True,
    )
    # seconds[phase][driver], cpu[phase][driver]: one figure per round;
    # tasks[phase][driver]: what their worker logs say
    seconds: dict[str, dict[str, list[float]]] = {p: {d: [] for d in DRIVERS} for p in phases}
    cpu: dict[str, dict[str, list[float]]] = {p: {d: [] for d in DRIVERS} for p in phases}
    tasks = {p: {d: Tasks() for d in DRIVERS[1:]} for p in phases}
    try:
        _wait(lambda: _ping(port), 20, "the private redis-server")
        with tempfile.TemporaryDirectory(prefix="bp-wbench-") as tmp:
            setup = None
            if "harvest" in phases:
                setup = computed(Path(args.computed or Path(tmp) / "h"), n, submit_chunk)
            if "submit" in phases:
                # The first submission of a run was up to 2x faster than the later ones,
                # whichever driver made it (cause not established; the write-back of the
                # files earlier ones wrote is a candidate): one untimed submission first.
                where = Path(tmp) / "warm-up"
                t, _cpu = submit_phase(where, n, submit_chunk, "in process", client, None)
                shutil.rmtree(where, ignore_errors=True)
                print(f"  warm-up submission (not counted): {t:.1f} s, load {_load()}", flush=True)
            for r in range(args.rounds):
                order = DRIVERS[r % len(DRIVERS) :] + DRIVERS[: r % len(DRIVERS)]
                for phase in phases:
                    for d in order:
                        _flush(redis_url)
                        log = tasks[phase].get(d)
                        if phase == "submit":
                            where = Path(tmp) / f"s{r}-{d.replace(' ', '')}"
                            t, c = submit_phase(where, n, submit_chunk, d, client, log)
                            shutil.rmtree(where, ignore_errors=True)
                        else:
                            assert setup is not None
                            t, c = harvest_phase(setup, n, chunk, d, client, log)
                        seconds[phase][d].append(t)
                        cpu[phase][d].append(c)
                        print(
                            f"  round {r + 1}, {phase}, {d}: {t:.1f} s, CPU {c:.1f} s, "
                            f"load {_load()}",
                            flush=True,
                        )
            if setup is not None:
                setup.project.close()
    finally:
        client.close()
        gc.collect()  # the results' finalisers talk to Redis: run them while it is up
        redis.terminate()
        redis.wait()
    print("wall-clock seconds:")
    _table(n, seconds)
    print("CPU seconds (in process: this process and its children; Celery: the worker, its pool")
    print("processes and their children, and Redis):")
    _table(n, cpu)
    for phase in phases:
        for d, log in tasks[phase].items():
            print(f"{d}, {phase}, all rounds: {log.summary()}")
    print(f"load average at the end: {_load()}")
    return 0


def _load() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def _table(n: int, seconds: dict[str, dict[str, list[float]]]) -> None:
    """Print the median seconds and points/s per phase and driver, and Celery's overhead.

    The same for wall-clock seconds and for CPU seconds.

    The overhead is the median over rounds of (driver's time / in-process time
    of the same round) - 1, both phases added: ratios within a round share its
    load, which on a shared machine drifts more than the drivers differ.
    """
    phases = list(seconds)
    rounds = len(next(iter(seconds.values()))["in process"])
    header = "".join(f"{p + ' s':>11} {'pts/s':>7}" for p in phases)
    print(f"{'driver':<12}{header} {'both pts/s':>11} {'overhead':>9}  per round")
    for d in DRIVERS:
        cells = ""
        for p in phases:
            mid = statistics.median(seconds[p][d])
            cells += f"{mid:>11.1f} {n / mid:>7.0f}"
        both = [sum(seconds[p][d][r] for p in phases) for r in range(rounds)]
        base = [sum(seconds[p]["in process"][r] for p in phases) for r in range(rounds)]
        ratios = [b / a - 1 for a, b in zip(base, both, strict=True)]
        per_round = " ".join(f"{x * 100:+.0f}%" for x in ratios)
        print(
            f"{d:<12}{cells} {n / statistics.median(both):>11.0f} "
            f"{statistics.median(ratios) * 100:>8.1f}%  {per_round}"
        )


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
