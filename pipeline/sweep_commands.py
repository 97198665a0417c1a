"""Command-line verbs that act on sweeps: submit, status, harvest, results, retry, cancel, run.

A spec file (``*.yaml``) starts or continues a sweep; a sweep's name addresses
one already recorded in the state database (its latest version unless
``--version`` is given). ``--server`` names a server config (a file in
``configs/servers/`` or a path); a recorded sweep remembers its server.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline.api import Sweep
from pipeline.settings import Settings
from pipeline.track import STATUS_ORDER, SweepStatus

__all__ = ["cancel", "harvest", "report", "results", "retry", "run", "status", "submit"]

_STATE_COLOURS = {
    "planned": "dim",
    "queued": "cyan",
    "running": "blue",
    "done": "green",
    "harvested": "bold green",
    "failed": "red",
    "exhausted": "bold red",
    "cancelled": "yellow",
    "lost": "magenta",
    "bad_output": "magenta",
    "purged": "dim",
}


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options every sweep command shares: --state, --store, --server, --version."""
    func = click.option(
        "--version",
        "version",
        type=int,
        default=None,
        help="Act on this version of a recorded sweep (default: the latest).",
    )(func)
    func = click.option(
        "--server",
        default=None,
        help="Server config: a name in configs/servers/ or a path to a YAML file.",
    )(func)
    func = click.option(
        "--store",
        default=None,
        envvar="BOINC_PIPELINE_STORE",
        help="Result store folder or URL [env BOINC_PIPELINE_STORE].",
    )(func)
    return click.option(
        "--state",
        default=None,
        envvar="BOINC_PIPELINE_STATE",
        help="State database URL [env BOINC_PIPELINE_STATE; default sqlite in .boinc-pipeline/].",
    )(func)


def _open(
    target: str, state: str | None, store: str | None, server: str | None, version: int | None
) -> Sweep:
    settings = Settings.from_env(state=state, store=store)
    return Sweep.resolve(target, settings=settings, server=server, version=version)


def _status_table(status: SweepStatus, *, rate: float | None = None) -> Table:
    table = Table(title=f"{status.sweep} v{status.version}: {status.total} points")
    table.add_column("state")
    table.add_column("points", justify="right")
    table.add_column("share", justify="right")
    for state in STATUS_ORDER:
        n = status.counts.get(state, 0)
        if n:
            share = f"{100 * n / status.total:.1f}%" if status.total else "-"
            table.add_row(f"[{_STATE_COLOURS[state]}]{state}[/]", str(n), share)
    if rate is not None:
        finished = status.counts.get("harvested", 0) + status.counts.get("done", 0)
        left = (
            status.total
            - finished
            - sum(status.counts.get(s, 0) for s in ("exhausted", "cancelled", "purged"))
        )
        eta = f"{left / rate / 60:.1f} min" if rate > 0 and left > 0 else "-"
        table.caption = f"{rate * 3600:.0f} points/h, ETA {eta}"
    return table


def _print_failures(console: Console, status: SweepStatus) -> None:
    if not status.failure_reasons:
        return
    table = Table(title="failure reasons")
    table.add_column("points", justify="right")
    table.add_column("reason")
    for reason, n in sorted(status.failure_reasons.items(), key=lambda kv: -kv[1])[:10]:
        table.add_row(str(n), reason)
    console.print(table)


def _print_point(console: Console, detail: dict[str, Any]) -> None:
    console.print(
        f"point {detail['point_id']}: [bold]{detail['state']}[/] (attempt {detail['attempt']})"
        + (f" - {detail['reason']}" if detail["reason"] else "")
    )
    console.print(f"params: {json.dumps(detail['params'])}")
    table = Table()
    for column in (
        "attempt",
        "result",
        "server",
        "outcome",
        "client",
        "exit",
        "host",
        "cpu s",
        "elapsed s",
    ):
        table.add_column(column)
    for a in detail["attempts"]:
        if not a["results"]:
            note = "purged" if a["purged"] else (a["outcome"] or "no results yet")
            table.add_row(str(a["attempt"]), a["wu_name"], note, "", "", "", "", "", "")
        for r in a["results"]:
            table.add_row(
                str(a["attempt"]),
                r["name"],
                r["server_state"],
                r["outcome"],
                r["client_state"],
                str(r["exit_status"]),
                str(r["hostid"]),
                f"{r['cpu_time']:.1f}",
                f"{r['elapsed_time']:.1f}",
            )
    console.print(table)


@click.command()
@click.argument("target")
@_common
@click.option("--until-done", is_flag=True, help="Keep topping up until every point is submitted.")
@click.option("--interval", default=30.0, show_default=True, help="Seconds between passes.")
@click.option("--async", "run_async", is_flag=True, help="Enqueue on the Celery workers instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def submit(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    until_done: bool,
    interval: float,
    run_async: bool,
    as_json: bool,
) -> None:
    """Submit a sweep: one queue top-up pass (or more with --until-done).

    \b
    Examples:
      boinc-pipeline submit configs/examples/grid-csv.yaml --server local-emulator
      boinc-pipeline submit grid-csv --until-done
    """
    if run_async:
        from workers.enqueue import submit_async

        click.echo(submit_async(target, server))
        return
    console = Console(stderr=True)
    with _open(target, state, store, server, version) as sweep:
        while True:
            report = sweep.submit()
            created = report.report.created
            info = {
                "sweep": sweep.spec.name,
                "version": sweep.spec.version,
                "created": created,
                "queued_before": report.queued_before,
                "cushion": report.cushion,
                "timings": {k: round(v, 3) for k, v in report.report.timings.items()},
            }
            if as_json:
                click.echo(json.dumps(info))
            else:
                console.print(
                    f"{sweep.spec.name} v{sweep.spec.version}: created {created} workunit(s); "
                    f"queue held {report.queued_before} of a cushion of {report.cushion}"
                )
            if not until_done or not sweep.state.points_in_state(
                sweep.record.id, ["planned"], limit=1
            ):
                return
            time.sleep(interval)


@click.command()
@click.argument("target")
@_common
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.option("--points", is_flag=True, help="List every point with its state and reason.")
@click.option(
    "--point",
    "point_id",
    default=None,
    help="Show one point (an id or its prefix): attempts, hosts, times, exit statuses.",
)
@click.option("--offline", is_flag=True, help="Read the state database only; do not ask BOINC.")
@click.option("--watch", is_flag=True, help="Refresh a live table until interrupted.")
@click.option("--interval", default=10.0, show_default=True, help="Seconds between refreshes.")
def status(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    as_json: bool,
    points: bool,
    point_id: str | None,
    offline: bool,
    watch: bool,
    interval: float,
) -> None:
    """Show where every point of a sweep stands (counts by state, failure reasons).

    \b
    Examples:
      boinc-pipeline status grid-csv
      boinc-pipeline status grid-csv --json
      boinc-pipeline status grid-csv --watch
      boinc-pipeline status grid-csv --point 0d9caee7
    """
    console = Console()
    with _open(target, state, store, server, version) as sweep:
        if point_id:
            detail = sweep.point_detail(point_id)
            if as_json:
                click.echo(json.dumps(detail))
            else:
                _print_point(console, detail)
            return
        if points:
            frame = sweep.status()
            if as_json:
                click.echo(frame.to_json(orient="records"))
            else:
                console.print(frame.to_string(index=False, max_rows=200))
            return

        def read() -> SweepStatus:
            if offline:
                rec = sweep.record_if_known()
                counts = sweep.state.point_counts(rec.id)
                return SweepStatus(rec.name, rec.version, sum(counts.values()), counts)
            return sweep.track()

        current = read()
        if as_json:
            click.echo(json.dumps(current.as_dict()))
            return
        if not watch:
            console.print(_status_table(current))
            _print_failures(console, current)
            return
        start, first = time.monotonic(), current
        with Live(_status_table(current), console=console, refresh_per_second=2) as live:
            try:
                while True:
                    time.sleep(interval)
                    current = read()
                    gained = sum(current.counts.get(s, 0) for s in ("done", "harvested")) - sum(
                        first.counts.get(s, 0) for s in ("done", "harvested")
                    )
                    rate = gained / max(time.monotonic() - start, 1e-9)
                    live.update(_status_table(current, rate=rate))
                    if sweep.is_finished(current):
                        break
            except KeyboardInterrupt:
                pass


@click.command()
@click.argument("target")
@_common
@click.option("--chunk-size", default=200, show_default=True, help="Archives per tar stream.")
@click.option("--remove", is_flag=True, help="Delete ingested archives on the server.")
@click.option("--async", "run_async", is_flag=True, help="Enqueue on the Celery workers instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def harvest(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    chunk_size: int,
    remove: bool,
    run_async: bool,
    as_json: bool,
) -> None:
    """Stream finished results into the Parquet store, exactly once.

    \b
    Examples:
      boinc-pipeline harvest grid-csv
      boinc-pipeline harvest grid-csv --remove
    """
    if run_async:
        from workers.enqueue import harvest_async

        click.echo(harvest_async(target))
        return
    with _open(target, state, store, server, version) as sweep:
        report = sweep.harvest(chunk_size=chunk_size, remove_ingested=remove)
    if as_json:
        click.echo(json.dumps(report.as_dict()))
        return
    bad = ", ".join(f"{k} {v}" for k, v in report.bad_output.items()) or "none"
    Console(stderr=True).print(
        f"ingested {report.ingested} result(s), {report.rows} row(s) in {len(report.parts)} "
        f"part(s); lost {report.lost}; bad output: {bad}; {report.seconds:.1f} s"
    )


@click.command()
@click.argument("target")
@_common
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to FILE.parquet or FILE.csv instead of printing the head.",
)
@click.option("--columns", default=None, help="Comma-separated columns to read.")
@click.option("--all-versions", is_flag=True, help="Read every version of the sweep.")
@click.option("--limit", default=20, show_default=True, help="Rows to print without --out.")
def results(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    out: Path | None,
    columns: str | None,
    all_versions: bool,
    limit: int,
) -> None:
    """Read a sweep's harvested rows: print the head, or write them to a file.

    \b
    Examples:
      boinc-pipeline results grid-csv
      boinc-pipeline results grid-csv --out grid.parquet
      boinc-pipeline results grid-csv --columns p.omega,chi2 --out chi2.csv
    """
    cols = [c.strip() for c in columns.split(",")] if columns else None
    with _open(target, state, store, server, version) as sweep:
        frame = sweep.results(columns=cols, all_versions=all_versions)
    if out is None:
        Console().print(frame.head(limit).to_string(index=False))
        click.echo(f"{len(frame)} row(s)", err=True)
        return
    if out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        raise click.BadParameter(f"{out}: use a .parquet or .csv file name", param_hint="--out")
    click.echo(f"wrote {len(frame)} row(s) to {out}", err=True)


@click.command()
@click.argument("target")
@_common
@click.option("--reason", default=None, help="Only points whose failure reason contains this.")
@click.option(
    "--include-exhausted", is_flag=True, help="Also points that used up max_attempts (one more)."
)
def retry(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    reason: str | None,
    include_exhausted: bool,
) -> None:
    """Submit a new attempt now for failed, lost and bad-output points.

    \b
    Examples:
      boinc-pipeline retry grid-csv
      boinc-pipeline retry grid-csv --reason "exit status 137" --include-exhausted
    """
    with _open(target, state, store, server, version) as sweep:
        report = sweep.retry(reason=reason, include_exhausted=include_exhausted)
    click.echo(f"submitted {report.created} new attempt(s)", err=True)


@click.command()
@click.argument("target")
@_common
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cancel(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    yes: bool,
) -> None:
    """Cancel every unfinished workunit of a sweep (BOINC's bin/cancel_jobs).

    \b
    Example:
      boinc-pipeline cancel grid-csv --yes
    """
    with _open(target, state, store, server, version) as sweep:
        if not yes and not click.confirm(
            f"Cancel every unfinished workunit of {sweep.spec.name} v{sweep.spec.version}?"
        ):
            raise click.exceptions.Exit(1)
        n = sweep.cancel()
    click.echo(f"cancelled {n} workunit(s)", err=True)


@click.command()
@click.argument("target")
@_common
@click.option("--interval", default=30.0, show_default=True, help="Seconds between passes.")
@click.option("--timeout", default=None, type=float, help="Give up after this many seconds.")
def run(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    interval: float,
    timeout: float | None,
) -> None:
    """Top up, track and harvest in a loop until every point is finished (in process).

    \b
    Example:
      boinc-pipeline run configs/examples/grid-csv.yaml --server local-emulator
    """
    console = Console(stderr=True)
    with _open(target, state, store, server, version) as sweep:
        final = sweep.run(
            interval=interval,
            timeout=timeout,
            on_status=lambda s: console.print(
                " ".join(f"{k}={v}" for k, v in sorted(s.counts.items()))
            ),
        )
        console.print(_status_table(final))
        _print_failures(console, final)
    if not sweep.is_finished(final):
        sys.exit(1)


@click.command()
@click.argument("target")
@_common
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write.",
)
@click.option(
    "--heatmap",
    default=None,
    help="Two grid parameters for the output heatmaps, e.g. x,y (default: the first two).",
)
def report(
    target: str,
    state: str | None,
    store: str | None,
    server: str | None,
    version: int | None,
    out: Path,
    heatmap: str | None,
) -> None:
    """Write a self-contained HTML report: progress, failures, run times, outputs.

    \b
    Examples:
      boinc-pipeline report grid-csv --out grid.html
      boinc-pipeline report grid-csv --heatmap x,y
    """
    from pipeline.reporting import write_sweep_report

    pair = None
    if heatmap:
        names = [n.strip() for n in heatmap.split(",")]
        if len(names) != 2:
            raise click.BadParameter(
                f"{heatmap!r}: give two parameter names separated by a comma",
                param_hint="--heatmap",
            )
        pair = (names[0], names[1])
    with _open(target, state, store, server, version) as sweep:
        path = write_sweep_report(sweep, out, heatmap=pair)
    click.echo(f"wrote {path}", err=True)
