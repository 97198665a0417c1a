"""``make demo``: a real sweep end to end on embedded defaults, in about a minute.

Everything lives under ``./demo-data/`` (made afresh on every run): an emulated
boinc-server-docker project with its BOINC database on SQLite, whose daemons and
volunteer hosts run as a separate process, as a real server's would; the
pipeline's state database on SQLite; and the Parquet result store. The sweep
goes through the same code a real deployment uses: spec → plan → submit
through the local transport → the emulator runs the jobs → track → harvest →
store. A few client errors are injected so the retries show.

``--celery`` (``make demo-celery``) runs the same sweep through real Celery
workers instead: when Redis answers at ``--redis URL`` (default
:data:`DEFAULT_REDIS`), the demo starts ``celery worker`` (two prefork
processes), sends the ``submit`` task, then plays the beat's part, keeping one
``top_up``, one ``poll`` and one ``harvest`` task (which fans out
``harvest_chunk`` tasks) in flight until the sweep is finished. Every Redis key
it makes carries a prefix of its own (``BOINC_PIPELINE_KEY_PREFIX``) and is
deleted at the end; the workers are stopped at the end, on Ctrl-C and on
errors alike. When Redis does not answer, it says so and exits with status 2
(:data:`EXIT_NO_REDIS`) rather than falling back to the plain demo, which
``make demo`` runs without Redis.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.api import Sweep
from pipeline.config import AppConfig, DbConfig, ServerConfig
from pipeline.settings import Settings
from pipeline.spec import SweepSpec, load_spec
from pipeline.track import SweepStatus

__all__ = ["DEFAULT_REDIS", "EXIT_NO_REDIS", "main", "redis_problem", "run_demo"]

DEFAULT_SPEC = "configs/examples/grid-csv.yaml"
FAULTS = "client_error=0.15:3,seed=7"
#: Where ``--celery`` looks for Redis unless told otherwise: a database of its own.
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
#: Exit status of ``--celery`` when Redis does not answer.
EXIT_NO_REDIS = 2
#: Exit status after Ctrl-C (or SIGTERM), as a shell reports SIGINT.
EXIT_INTERRUPTED = 130

#: The workers' settings for the demo: the deployment's defaults shrunk to seconds.
_WORKER_ENV = {
    "BOINC_PIPELINE_LOCK_TTL": "10",
    "BOINC_PIPELINE_PENDING_TTL": "30",
    "BOINC_PIPELINE_HARVEST_CHUNK": "5",
    "BOINC_PIPELINE_HARVEST_LEASE": "30",
    "BOINC_PIPELINE_MAX_RETRIES": "10",
    "BOINC_PIPELINE_RETRY_BACKOFF": "0.5",
    "BOINC_PIPELINE_RETRY_MAX": "4",
    "BOINC_PIPELINE_TIME_LIMIT": "120",
    "BOINC_PIPELINE_VISIBILITY": "150",
}


def _server_config(data: Path) -> ServerConfig:
    return ServerConfig(
        name="demo",
        transport=f"local://{(data / 'server' / 'project').resolve()}",
        results=f"local://{(data / 'server' / 'results').resolve()}",
        boinc_db=DbConfig(url=f"sqlite:///{(data / 'server' / 'boinc.sqlite').resolve()}"),
        mode="batch",
        python=sys.executable,
        apps={"boinc2docker": AppConfig(cushion=12)},
    )


def redis_problem(url: str) -> str | None:
    """Return why Redis at ``url`` cannot be used (no answer to PING), or None if it answers."""
    if not url.startswith(("redis://", "rediss://")):
        return f"{url!r} is not a redis:// URL"
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    except ValueError as exc:
        return f"{url!r} cannot be read: {exc}"
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


def run_demo(
    data: Path = Path("demo-data"),
    spec_path: str = DEFAULT_SPEC,
    timeout: float = 110.0,
    *,
    celery: bool = False,
    redis_url: str = DEFAULT_REDIS,
) -> int:
    """Run the demo sweep; return the process exit code (0 when every point was harvested).

    ``celery``: drive the sweep through Celery workers on the Redis at
    ``redis_url``; exit code :data:`EXIT_NO_REDIS` if it does not answer.
    """
    console = Console()
    spec = load_spec(spec_path)
    if celery:
        problem = redis_problem(redis_url)
        if problem is not None:
            console.print(
                f"[red]The Celery demo needs Redis at {redis_url}, which does not answer: "
                f"{problem}.[/]\n"
                "Start Redis (e.g. `redis-server --daemonize yes`, or `docker run -d -p "
                "6379:6379 redis:7`), or point to another one with --redis URL "
                "(make demo-celery REDIS=redis://HOST:PORT/DB).\n"
                "`make demo` runs the same sweep without Redis."
            )
            return EXIT_NO_REDIS
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    server = _server_config(data)
    server_file = data / "server.yaml"
    server_file.write_text(yaml.safe_dump(server.model_dump(mode="json"), sort_keys=False))
    cli = [sys.executable, "-m", "pipeline.cli"]
    project = data / "server" / "project"
    subprocess.run(
        [
            *cli,
            "emulator",
            "init",
            str(project),
            "--db",
            server.boinc_db.url,
            "--results-dir",
            str(data / "server" / "results"),
            "--image-mode",
            "host",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log = (data / "emulator.log").open("wb")  # closed once the daemons have stopped
    daemons = subprocess.Popen(
        [*cli, "emulator", "run", str(project), "--hosts", "4", "--faults", FAULTS],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    settings = Settings(
        state_url=f"sqlite:///{(data / 'state.sqlite').resolve()}",
        store_root=str((data / "store").resolve()),
    )
    how = " through Celery workers" if celery else ""
    console.rule(f"[bold]boinc-pipeline demo{how}: {spec.name} ({spec.size} points)")
    console.print(f"emulated server in {project}, faults {FAULTS}")
    started = time.monotonic()
    try:
        if celery:
            with _CeleryWorkers(data, settings, redis_url) as workers:
                console.print(f"Redis {redis_url}, keys prefixed {workers.prefix!r}")
                with console.status("starting the Celery workers"):
                    workers.wait_ready(timeout=120)
                console.print(f"Celery worker pid {workers.pid} (2 processes), log {workers.log}")
                status = _drive_celery(
                    console, workers, spec, str(server_file.resolve()), time.monotonic() + timeout
                )
            with Sweep.open(spec.name, version=status.version, settings=settings) as sweep:
                _finish(console, sweep, status, data)
        else:
            with Sweep(spec, server=server, settings=settings) as sweep:
                status = _drive(console, sweep, started + timeout)
                _finish(console, sweep, status, data)
        ok = status.counts.get("harvested", 0) == status.total
    finally:
        (project / "stop_daemons").touch()
        try:
            daemons.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemons.kill()
            daemons.wait()
        log.close()
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")
    console.print(
        "Look around (with .venv/bin on your PATH):\n"
        "  export BOINC_PIPELINE_STATE=sqlite:///demo-data/state.sqlite "
        "BOINC_PIPELINE_STORE=demo-data/store\n"
        "  boinc-pipeline status grid-csv --server demo-data/server.yaml\n"
        "  boinc-pipeline results grid-csv --out grid.csv"
    )
    return 0 if ok else 1


def _progress(console: Console, total: int, step: Callable[[], tuple[SweepStatus, bool]]) -> None:
    """Show the live bars; call ``step()`` every half second until it says the run ended."""
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {
            name: progress.add_task(name, total=total)
            for name in ("submitted", "finished", "harvested")
        }

        def show(c: dict[str, int]) -> None:
            progress.update(bars["submitted"], completed=total - c.get("planned", 0))
            progress.update(
                bars["finished"],
                completed=sum(c.get(s, 0) for s in ("done", "harvested", "exhausted", "cancelled")),
            )
            progress.update(bars["harvested"], completed=c.get("harvested", 0))

        while True:
            status, ended = step()
            show(status.counts)
            if ended:
                return
            time.sleep(0.5)


def _drive(console: Console, sweep: Sweep, deadline: float) -> SweepStatus:
    last: list[SweepStatus] = []

    def step() -> tuple[SweepStatus, bool]:
        sweep.submit()
        sweep.harvest()
        last[:] = [sweep.track()]
        return last[0], sweep.is_finished(last[0]) or time.monotonic() > deadline

    _progress(console, sweep.spec.size, step)
    return last[0]


# --------------------------------------------------------------------------- Celery


class _CeleryWorkers:
    """One ``celery worker`` (prefork, two processes) for the demo, and a client to send tasks.

    The worker runs in a process group of its own, so a Ctrl-C in the terminal
    reaches only the demo, which then stops the worker itself: SIGTERM (Celery's
    warm shutdown: running tasks finish), SIGKILL to the whole group after 20 s.
    """

    def __init__(self, data: Path, settings: Settings, redis_url: str) -> None:
        from workers.app import make_app
        from workers.settings import WorkerSettings

        self.data = data.resolve()
        self.redis_url = redis_url
        self.prefix = f"bp-demo-{secrets.token_hex(4)}:"
        self.env = dict(os.environ)
        for name in list(self.env):  # the demo's settings only, none of a deployment's
            if name.startswith("BOINC_PIPELINE_"):
                del self.env[name]
        root = str(Path(__file__).resolve().parents[1])
        path = self.env.get("PYTHONPATH")
        self.env.update(
            _WORKER_ENV,
            PYTHONPATH=f"{root}{os.pathsep}{path}" if path else root,
            BOINC_PIPELINE_BROKER=redis_url,
            BOINC_PIPELINE_KEY_PREFIX=self.prefix,
            BOINC_PIPELINE_STATE=settings.state_url,
            BOINC_PIPELINE_STORE=settings.store_root,
            BOINC_PIPELINE_SERVERS=str(self.data),
        )
        self.settings = WorkerSettings.load(self.env)
        self.client = make_app(self.settings)
        self.log = self.data / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> _CeleryWorkers:
        argv = [
            sys.executable, "-m", "celery", "-A", "workers.app", "worker",
            "--loglevel", "INFO", "--pool", "prefork", "--concurrency", "2",
            "--hostname", f"{self.prefix.rstrip(':')}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.data,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float) -> None:
        """Wait until the worker answers a ping; raise if it exits or stays silent."""
        deadline = time.monotonic() + timeout
        while not self.client.control.ping(timeout=1.0):
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the Celery worker did not start; its log ends:\n{tail}")

    def send(self, task: str, *args: Any, **kwargs: Any) -> Any:
        """Send ``boinc_pipeline.<task>``; return its AsyncResult."""
        return self.client.send_task(f"boinc_pipeline.{task}", args=list(args), kwargs=kwargs)

    def __exit__(self, *exc: object) -> None:
        with _signals_deferred():
            try:
                self._stop()
            finally:
                self._clean_redis()
                self.client.close()

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # the pool's children too
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def _clean_redis(self) -> None:
        """Delete every key the demo's broker, backend, locks and markers made."""
        import redis

        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
        except (redis.exceptions.RedisError, OSError) as exc:
            print(f"could not delete the demo's Redis keys ({self.prefix}*): {exc}")
        finally:
            client.close()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the demo cleans up, so a second Ctrl-C cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _drive_celery(
    console: Console, workers: _CeleryWorkers, spec: SweepSpec, server: str, deadline: float
) -> SweepStatus:
    """Send ``submit``, then keep one ``top_up``, ``poll`` and ``harvest`` in flight to the end."""
    from workers.enqueue import forget

    body = spec.model_dump(mode="json")
    submitted: Any = workers.send("submit", spec=body, server=server)
    inflight: dict[str, Any] = {}
    args: dict[str, tuple[Any, ...]] = {}
    status = SweepStatus(spec.name, spec.version, spec.size, {"planned": spec.size})

    def step() -> tuple[SweepStatus, bool]:
        nonlocal submitted, status
        if submitted is not None:
            if not submitted.ready():
                return status, time.monotonic() > deadline
            if submitted.failed():
                raise RuntimeError(f"the submit task failed: {submitted.result!r}")
            version = int(submitted.result["version"])
            forget(submitted)
            submitted = None
            args.update(
                top_up=(server, spec.app),
                poll=(spec.name, version),
                harvest=(spec.name, version),
            )
        finished = False
        for kind, task_args in args.items():
            result = inflight.get(kind)
            if result is not None:
                if not result.ready():
                    continue
                if result.failed():
                    console.print(f"[yellow]{kind} task failed: {result.result!r}[/]")
                elif kind == "poll":
                    status = SweepStatus.from_dict(result.result)
                    finished = bool(result.result["finished"])
                forget(result)
            if kind == "harvest" and not status.counts.get("done"):
                inflight.pop(kind, None)
                continue  # nothing finished waits for harvesting (as of the last poll)
            inflight[kind] = workers.send(kind, *task_args)
        return status, finished or time.monotonic() > deadline

    try:
        _progress(console, spec.size, step)
    finally:
        for result in inflight.values():
            forget(result)
        if submitted is not None:
            forget(submitted)
        inflight.clear()
        submitted = None
    return status


# --------------------------------------------------------------------------- the end


def _finish(console: Console, sweep: Sweep, status: SweepStatus, data: Path) -> None:
    from pipeline.sweep_commands import _print_failures, _status_table

    console.print(_status_table(status))
    _print_failures(console, status)
    frame = sweep.results()
    shown = [c for c in frame.columns if c.startswith(("p.", "out.")) or c in ("attempt", "hostid")]
    console.rule("results (head)")
    console.print(frame[shown].sort_values(shown[:2]).head(8).to_string(index=False))
    console.print(f"{len(frame)} rows in {data / 'store'}")
    from pipeline.reporting import write_sweep_report

    out = write_sweep_report(sweep, data / "report.html")
    console.print(f"report: {out}")


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m pipeline.demo [SPEC] [--celery [--redis URL]]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.demo", description="Run a sweep end to end on an emulated server."
    )
    parser.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help="the sweep spec to run")
    parser.add_argument(
        "--celery",
        action="store_true",
        help="drive the sweep through real Celery workers (needs Redis; exit 2 without it)",
    )
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, metavar="URL", help=f"Redis of --celery ({DEFAULT_REDIS})"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up as on Ctrl-C
    try:
        code = run_demo(spec_path=args.spec, celery=args.celery, redis_url=args.redis)
    except KeyboardInterrupt:
        print("demo interrupted; the emulator and the workers were stopped", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    main()
