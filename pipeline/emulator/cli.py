"""``boinc-pipeline emulator``: create, run and inspect an emulated BOINC project."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from pipeline.emulator.daemons import Daemons, status_counts
from pipeline.emulator.faults import Faults
from pipeline.emulator.project import IMAGE_MODES, Project
from pipeline.errors import ConfigError

__all__ = ["emulator"]


@click.group()
def emulator() -> None:
    """A stand-in BOINC server (boinc-server-docker, b2d variant) for dry runs and tests.

    \b
    Examples:
      boinc-pipeline emulator init demo-project
      boinc-pipeline emulator run demo-project --hosts 4 --faults client_error=0.1
      boinc-pipeline emulator status demo-project
    """


@emulator.command()
@click.argument("project_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--db", "db_url", help="SQLAlchemy URL (default: SQLite file in the project).")
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the assimilator puts results (default: PROJECT_DIR/results).",
)
@click.option(
    "--fanout", type=click.IntRange(min=1), default=1024, show_default=True, help="uldl_dir_fanout."
)
@click.option(
    "--image-mode",
    type=click.Choice(IMAGE_MODES),
    default="auto",
    show_default=True,
    help="How boinc2docker_create_work.py treats images.",
)
def init(
    project_dir: Path, db_url: str | None, results_dir: Path | None, fanout: int, image_mode: str
) -> None:
    """Create an emulated project in PROJECT_DIR."""
    project = Project.init(project_dir, db_url, results_dir, fanout=fanout, image_mode=image_mode)
    click.echo(f"created project {project.root} (database {project.db_url})")


@emulator.command()
@click.argument("project_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--hosts",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Number of emulated volunteer hosts.",
)
@click.option(
    "--faults", "faults_spec", default="", help="Fault spec, e.g. client_error=0.1,seed=3."
)
@click.option(
    "--clock-factor",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="How much faster than real time the server clock runs.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Most jobs running at once (default: number of CPUs, at least 2).",
)
@click.option("--once", is_flag=True, help="Do one pass of every daemon, then exit.")
@click.option("--timeout", type=float, default=None, help="Stop after this many seconds.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the daemons do.")
def run(
    project_dir: Path,
    hosts: int,
    faults_spec: str,
    clock_factor: float,
    parallel: int | None,
    once: bool,
    timeout: float | None,
    verbose: bool,
) -> None:
    """Run the daemons and hosts until the file PROJECT_DIR/stop_daemons exists."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    project = Project.open(project_dir)
    try:
        faults = Faults.parse(faults_spec)
    except ConfigError:
        raise
    daemons = Daemons(
        project, hosts=hosts, faults=faults, clock_factor=clock_factor, parallel=parallel or 0
    )
    if once:
        try:
            daemons.run_once()
        finally:
            daemons.shutdown()
        return
    daemons.run(timeout=timeout)


@emulator.command()
@click.argument("project_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(project_dir: Path, as_json: bool) -> None:
    """Print counts per state, read from the project's database."""
    counts = status_counts(Project.open(project_dir))
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
        return
    for section, values in counts.items():
        click.echo(f"{section}:")
        for key, n in values.items():
            click.echo(f"  {key:<24} {n}")
