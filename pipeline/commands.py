"""The ``validate``, ``plan`` and ``schema`` commands: check a sweep spec and show its workunits."""

from __future__ import annotations

import itertools
import json
import sys

import click

from pipeline.errors import SpecError, SpecProblem

__all__ = ["plan_command", "schema", "validate"]


def _features(spec: object) -> list[str]:
    from pipeline.spec import SweepSpec

    assert isinstance(spec, SweepSpec)
    out = []
    if spec.inputs:
        out.append("inputs")
    if spec.params_file:
        out.append("params_file")
    if spec.prerun:
        out.append("prerun")
    if spec.postrun:
        out.append("postrun")
    return out


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--server",
    "server_path",
    metavar="SERVER.yaml",
    type=click.Path(dir_okay=False),
    help="Server config whose default mode must be able to carry the spec.",
)
def validate(spec_path: str, server_path: str | None) -> None:
    """Check a sweep spec (and optionally a server config); exit 2 listing every problem.

    The effective submission mode is the spec's submit.mode, else the server
    config's mode. A spec using inputs, params_file, prerun or postrun cannot be
    submitted in `script` mode. With neither mode given, the modes that fit are
    reported.

    \b
    Examples:
      boinc-pipeline validate configs/examples/hello-world.yaml
      boinc-pipeline validate configs/examples/lhs-json.yaml \
        --server configs/servers/local-emulator.yaml
    """
    from pipeline.config import load_server_config
    from pipeline.plan import supported_modes
    from pipeline.spec import load_spec

    spec = load_spec(spec_path)
    server = load_server_config(server_path) if server_path else None
    fits = sorted(supported_modes(spec))
    mode = spec.submit.mode or (server.mode if server else None)
    source = "submit.mode" if spec.submit.mode else (f"{server_path} mode" if server else None)
    if mode is not None and mode not in fits:
        raise SpecError(
            [
                SpecProblem(
                    spec_path,
                    "submit.mode" if spec.submit.mode else "",
                    mode,
                    f"mode {mode!r} (from {source}) cannot carry {', '.join(_features(spec))}; "
                    f"modes that fit: {', '.join(fits)}",
                )
            ]
        )
    click.echo(f"{spec_path}: ok: sweep {spec.name} v{spec.version}, {spec.size} points")
    if mode:
        click.echo(f"mode: {mode} (from {source})")
    else:
        click.echo(f"modes that fit: {', '.join(fits)}")


@click.command("plan")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl"]),
    default="table",
    show_default=True,
    help="table: summary and rows (rich); jsonl: one JSON object per workunit on stdout.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=None,
    help="Show at most N workunits (table default: 20; jsonl default: all).",
)
@click.option(
    "--attempt", type=click.IntRange(min=1), default=1, show_default=True, help="Attempt number."
)
def plan_command(spec_path: str, fmt: str, limit: int | None, attempt: int) -> None:
    """Show the workunits a sweep spec makes, without submitting anything.

    The table starts with a summary: sweep, version, points, duplicates skipped,
    modes that fit, and the worst case of volunteer runs per point
    (submit.max_attempts x job.max_total_results). jsonl prints one object per
    workunit (wu_name, point_id, attempt, params, command, argv, input_files) and
    the summary on stderr.

    \b
    Examples:
      boinc-pipeline plan configs/examples/grid-csv.yaml
      boinc-pipeline plan configs/examples/grid-csv.yaml --format jsonl --limit 3
    """
    from pipeline.plan import plan, supported_modes
    from pipeline.spec import load_spec

    spec = load_spec(spec_path)
    stream = plan(spec, attempt=attempt)
    modes = ", ".join(sorted(supported_modes(spec)))
    if fmt == "jsonl":
        out = sys.stdout
        for lines in stream.jsonl_chunks(limit):  # many lines per write
            out.write(lines)
        click.echo(
            f"sweep {spec.name} v{spec.version}: {stream.points} points planned, "
            f"{stream.duplicates} duplicates skipped, modes that fit: {modes}, "
            f"worst case {spec.worst_case_runs} volunteer runs per point",
            err=True,
        )
        return

    from rich.console import Console
    from rich.table import Table

    shown = 20 if limit is None else limit
    rows = list(itertools.islice(stream, shown))
    for _ in stream:  # count the rest, and the duplicates
        pass
    console = Console()
    summary = Table.grid(padding=(0, 2))
    summary.add_row("sweep", spec.name)
    summary.add_row("version", str(spec.version))
    summary.add_row("workunit hash", spec.workunit_hash()[:16])
    summary.add_row("points", f"{stream.points} ({stream.points - stream.duplicates} distinct)")
    summary.add_row("duplicates", str(stream.duplicates))
    for ex in stream.duplicate_examples:
        summary.add_row("", f"e.g. {json.dumps(ex, ensure_ascii=False)}")
    summary.add_row("modes that fit", modes)
    summary.add_row(
        "worst case runs/point",
        f"{spec.worst_case_runs} (max_attempts {spec.submit.max_attempts} x "
        f"max_total_results {spec.job.max_total_results})",
    )
    console.print(summary)
    table = Table(show_lines=False)
    table.add_column("workunit")
    table.add_column("params")
    table.add_column("command")
    for wu in rows:
        table.add_row(
            wu.wu_name,
            json.dumps(wu.params, ensure_ascii=False),
            " ".join(json.dumps(a) if (" " in a or not a) else a for a in wu.command),
        )
    console.print(table)
    left = stream.points - stream.duplicates - len(rows)
    if left > 0:
        console.print(f"... {left} more (use --limit or --format jsonl)")


@click.command()
@click.option(
    "--server", is_flag=True, help="Print the server config's schema instead of the spec's."
)
@click.option(
    "--markdown",
    is_flag=True,
    help="Print the Markdown reference of both (docs/spec-reference.md).",
)
def schema(server: bool, markdown: bool) -> None:
    """Print the JSON Schema of a sweep spec (or, with --server, of a server config).

    \b
    Examples:
      boinc-pipeline schema > sweep.schema.json
      boinc-pipeline schema --server
      boinc-pipeline schema --markdown > docs/spec-reference.md
    """
    if markdown:
        from pipeline.schema_doc import markdown_reference

        click.echo(markdown_reference(), nl=False)
        return
    if server:
        from pipeline.config import ServerConfig

        doc = ServerConfig.model_json_schema()
    else:
        from pipeline.spec import SweepSpec

        doc = SweepSpec.model_json_schema()
    click.echo(json.dumps(doc, indent=2, sort_keys=True))
