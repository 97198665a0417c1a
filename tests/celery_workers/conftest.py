"""A small deployment for the worker tests: emulated BOINC server, real Celery workers and beat.

Everything runs as real processes: the emulator's daemons and volunteer hosts
(``boinc-pipeline emulator run``), ``celery worker`` with the prefork pool,
``celery beat``, against a real Redis (or RabbitMQ) and a real PostgreSQL state
database. Timings are shrunk through the workers' own settings (a 1 s tick,
short lock and lease expiries) so a run takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from conftest import free_port, port_open, service_missing

from pipeline import boinc
from pipeline.emulator import Project
from pipeline.plan import sweep_name_prefix
from pipeline.state import StateDB, ledger

VENV_BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SERVER = "emulated"


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``cond`` until it returns something true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


@dataclass
class Cluster:
    """An emulated BOINC project plus worker, beat and daemon processes sharing one environment."""

    tmp: Path
    project: Project
    state_url: str
    broker: str
    redis: str
    cushion: int = 100
    python: str = "python3"
    overrides: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.servers = self.tmp / "servers"
        self.servers.mkdir(exist_ok=True)
        self.write_server()

    def write_server(self) -> None:
        """Write the server config the workers find by name."""
        config = {
            "name": SERVER,
            "transport": f"local://{self.project.root}",
            "results": f"local://{self.project.results_dir}",
            "boinc_db": {"url": self.project.db_url},
            "mode": "batch",
            "python": self.python,
            "apps": {"boinc2docker": {"cushion": self.cushion}},
        }
        (self.servers / f"{SERVER}.yaml").write_text(yaml.safe_dump(config))

    @property
    def env(self) -> dict[str, str]:
        """The environment every worker and beat process gets."""
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}",
                "PYTHONPATH": str(ROOT),
                "BOINC_PIPELINE_BROKER": self.broker,
                "BOINC_PIPELINE_REDIS": self.redis,
                "BOINC_PIPELINE_STATE": self.state_url,
                "BOINC_PIPELINE_STORE": str(self.tmp / "store"),
                "BOINC_PIPELINE_SERVERS": str(self.servers),
                "BOINC_PIPELINE_TICK": "1",
                "BOINC_PIPELINE_DEFAULT_EVERY": "1",
                "BOINC_PIPELINE_LOCK_TTL": "4",
                "BOINC_PIPELINE_PENDING_TTL": "8",
                "BOINC_PIPELINE_HARVEST_CHUNK": "5",
                "BOINC_PIPELINE_HARVEST_LEASE": "6",
                "BOINC_PIPELINE_MAX_RETRIES": "30",
                "BOINC_PIPELINE_RETRY_BACKOFF": "0.5",
                "BOINC_PIPELINE_RETRY_MAX": "4",
                "BOINC_PIPELINE_TIME_LIMIT": "120",
                "BOINC_PIPELINE_VISIBILITY": "150",
                "PYTHONWARNINGS": "ignore",
            }
        )
        env.pop("BOINC_PIPELINE_WORKERS_CONFIG", None)
        env.update(self.overrides)
        return env

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                argv,
                cwd=self.tmp,
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(
        self, name: str, concurrency: int = 1, path: Path | None = None, restart: bool = False
    ) -> None:
        """Start ``celery worker`` (prefork pool) as its own process group.

        ``path``: a folder put first on the worker's PATH (for slowed-down tools).
        ``restart``: start it again whenever it exits, as Compose's
        ``restart: unless-stopped`` does in the deployment.
        """
        env = self.env
        if path is not None:
            env["PATH"] = f"{path}:{env['PATH']}"
        argv = [
            str(VENV_BIN / "celery"),
            "-A",
            "workers.app",
            "worker",
            "--loglevel",
            "INFO",
            "--pool",
            "prefork",
            "--concurrency",
            str(concurrency),
            "--hostname",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if restart:
            loop = 'while true; do "$@"; echo "worker exited with $?; restarting"; sleep 1; done'
            argv = ["sh", "-c", loop, "sh", *argv]
        self._start(name, argv, env)

    def start_beat(self, name: str = "beat") -> None:
        """Start ``celery beat`` with its schedule file in the test folder."""
        self._start(
            name,
            [
                str(VENV_BIN / "celery"),
                "-A",
                "workers.app",
                "beat",
                "--loglevel",
                "INFO",
                "--schedule",
                str(self.tmp / f"{name}-schedule"),
                "--max-interval",
                "1",
            ],
        )

    def start_daemons(self, hosts: int = 2) -> None:
        """Run the emulated BOINC daemons and volunteer hosts in a process of their own."""
        self.project.stop_file.unlink(missing_ok=True)
        self._start(
            "daemons",
            [
                str(VENV_BIN / "boinc-pipeline"),
                "emulator",
                "run",
                str(self.project.root),
                "--hosts",
                str(hosts),
                "--parallel",
                str(hosts),
            ],
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a process's whole group (the worker and its pool children)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        """Stop a process: the daemons by their stop file, the others by SIGTERM, then SIGKILL."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if name == "daemons":
            self.project.stop_file.touch()
        else:
            with _quiet():
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with _quiet():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if name != "daemons":
            with _quiet():  # pool children left behind by a killed parent
                os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        """Stop every process this cluster started."""
        for name in list(self.procs):
            self.stop(name)

    def logs(self) -> str:
        """The tail of every process's log, for failure messages."""
        out = []
        for log in sorted(self.tmp.glob("*.log")):
            text = log.read_text(errors="replace")
            out.append(f"==== {log.name}\n{text[-3000:]}")
        return "\n".join(out)

    # -- reading the outcome ----------------------------------------------------

    def state(self) -> StateDB:
        """A new connection to the state database (close it after use)."""
        return StateDB(self.state_url)

    def counts(self, name: str) -> dict[str, int]:
        """Point counts by state of a sweep (empty until it is recorded)."""
        with self.state() as state:
            try:
                rec = state.get_sweep(name)
            except Exception:
                return {}
            return state.point_counts(rec.id)

    def workunit_names(self, name: str) -> list[str]:
        """Every workunit name of the sweep in the BOINC database (duplicates kept)."""
        engine = sa.create_engine(self.project.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(boinc.workunit.c.name).where(
                        boinc.workunit.c.name.like(sweep_name_prefix(name, 1) + "%")
                    )
                ).all()
        finally:
            engine.dispose()
        return [r.name for r in rows]

    def assert_exactly_once(self, name: str, points: int) -> None:
        """Every point harvested once: one row set, one committed ledger row, one workunit."""
        from pipeline.store import ResultStore

        with self.state() as state:
            rec = state.get_sweep(name)
            assert state.point_counts(rec.id) == {"harvested": points}
            attempts = state.attempts_of(rec.id)
            with state.engine.connect() as conn:
                committed = conn.execute(
                    sa.select(ledger.c.point_id, sa.func.count())
                    .where(ledger.c.sweep_id == rec.id, ledger.c.state == "committed")
                    .group_by(ledger.c.point_id)
                ).all()
            df = ResultStore(state, str(self.tmp / "store")).read(name)
        assert len(committed) == points
        assert all(n == 1 for _p, n in committed)
        assert len(df) == points
        assert df["point_id"].is_unique
        assert all(z == x * y for x, y, z in zip(df["p.x"], df["p.y"], df["z"], strict=True))
        names = self.workunit_names(name)
        assert len(names) == len(set(names)), "a workunit name was created twice"
        # No faults are injected, so every point needs exactly one workunit.
        assert len(names) == points, f"{len(names)} workunits for {points} points"
        assert sorted(a.wu_name for a in attempts) == sorted(names)


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: Any, tb: Any) -> bool:
        return tp is ProcessLookupError


@pytest.fixture
def make_cluster(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> Iterator[Callable[..., Cluster]]:
    """Build clusters on an emulated project (SQLite BOINC DB), PostgreSQL state and Redis."""
    if os.geteuid() != 0:
        pytest.skip("the emulator's hosts need root for mount namespaces")
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        project = Project.init(tmp_path / "project", None, tmp_path / "results", image_mode="host")
        kwargs.setdefault("state_url", postgres_url)
        kwargs.setdefault("broker", redis_url)
        kwargs.setdefault("redis", redis_url)
        cluster = Cluster(tmp=tmp_path, project=project, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop_all()
        cluster.project.close()


def slow_tool(folder: Path, name: str, real: str, delay: float) -> Path:
    """Write ``folder/name``: a script that sleeps ``delay`` seconds, then runs ``real``.

    A stand-in for a slow server (a big chunk, a slow disk): the tests need a
    top-up or a harvest that lasts long enough to kill a worker inside it, which
    the emulator, fast on purpose, cannot give on demand.
    """
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\nsleep {delay}\nexec {real} "$@"\n')
    path.chmod(0o755)
    return path


def spec_file(tmp: Path, spec: dict[str, Any]) -> Path:
    """Write a spec to a YAML file and return its path."""
    path = tmp / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def submit_async(cluster: Cluster, spec: dict[str, Any]) -> str:
    """Queue a sweep through :func:`workers.enqueue.submit_async`, in a process with its env."""
    path = spec_file(cluster.tmp, spec)
    code = (
        "import sys; from workers.enqueue import submit_async; "
        "print(submit_async(sys.argv[1], sys.argv[2]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), SERVER],
        env=cluster.env,
        cwd=cluster.tmp,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


class PrivateRedis:
    """A Redis server of the test's own (no persistence), which the test may kill and restart."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it empty and wait until it answers."""
        exe = shutil.which("redis-server")
        if exe is None:
            service_missing("redis", "redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), 20, "the private Redis")

    def kill(self) -> None:
        """Kill -9 it: everything it held is gone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class PrivatePostgres:
    """A PostgreSQL server of the test's own, run as user postgres, which the test may stop."""

    def __init__(self, tmp: Path) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            service_missing("postgresql", "no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = bins[-1].parent
        self.port = free_port()
        # Outside pytest's folder, which user postgres cannot enter (mode 0700).
        self.base = Path(tempfile.mkdtemp(prefix="bp-pg-"))
        shutil.chown(self.base, "postgres", "postgres")
        self.dir = self.base / "data"
        self.sock = self.base / "sock"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def init(self) -> None:
        """Create the cluster (trust authentication on 127.0.0.1)."""
        for d in (self.dir, self.sock):
            d.mkdir()
            shutil.chown(d, "postgres", "postgres")
        self._as_postgres(
            "initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            "pg_ctl", "-D", str(self.dir), "-o", opts, "-w", "-l", str(self.dir / "log"), "start"
        )

    def stop(self) -> None:
        """Stop it at once (connections drop, as in a crash)."""
        with contextlib.suppress(RuntimeError):
            self._as_postgres("pg_ctl", "-D", str(self.dir), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop it and delete its files."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
