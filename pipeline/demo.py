"""``make demo``: a real sweep end to end on embedded defaults, in about a minute.

Everything lives under ``./demo-data/`` (made afresh on every run): an emulated
boinc-server-docker project with its BOINC database on SQLite, whose daemons and
volunteer hosts run as a separate process, as a real server's would; the
pipeline's state database on SQLite; and the Parquet result store. The sweep
goes through the same code a real deployment uses: spec → plan → submit
through the local transport → the emulator runs the jobs → track → harvest →
store. A few client errors are injected so the retries show.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.api import Sweep
from pipeline.config import AppConfig, DbConfig, ServerConfig
from pipeline.settings import Settings
from pipeline.spec import load_spec
from pipeline.track import SweepStatus

__all__ = ["main", "run_demo"]

DEFAULT_SPEC = "configs/examples/grid-csv.yaml"
FAULTS = "client_error=0.15:3,seed=7"


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


def run_demo(
    data: Path = Path("demo-data"), spec_path: str = DEFAULT_SPEC, timeout: float = 110.0
) -> int:
    """Run the demo sweep; return the process exit code (0 when every point was harvested)."""
    console = Console()
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    server = _server_config(data)
    (data / "server.yaml").write_text(
        yaml.safe_dump(server.model_dump(mode="json"), sort_keys=False)
    )
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
    spec = load_spec(spec_path)
    console.rule(f"[bold]boinc-pipeline demo: {spec.name} ({spec.size} points)")
    console.print(f"emulated server in {project}, faults {FAULTS}")
    started = time.monotonic()
    try:
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


def _drive(console: Console, sweep: Sweep, deadline: float) -> SweepStatus:
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        total = sweep.spec.size
        bars = {
            name: progress.add_task(name, total=total)
            for name in ("submitted", "finished", "harvested")
        }
        while True:
            sweep.submit()
            sweep.harvest()
            status = sweep.track()
            c = status.counts
            progress.update(bars["submitted"], completed=total - c.get("planned", 0))
            progress.update(
                bars["finished"],
                completed=sum(c.get(s, 0) for s in ("done", "harvested", "exhausted", "cancelled")),
            )
            progress.update(bars["harvested"], completed=c.get("harvested", 0))
            if sweep.is_finished(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.5)


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


def main() -> None:
    """Entry point of ``python -m pipeline.demo``."""
    spec = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SPEC
    sys.exit(run_demo(spec_path=spec))


if __name__ == "__main__":
    main()
