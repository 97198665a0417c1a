"""The ``boinc-pipeline`` command line.

Subcommands live in the modules of their stage and are imported only when used,
through the ``COMMANDS`` table of lazy ``"module:attribute"`` strings. Every
command exits 0 when it succeeded, 1 on a failure, 2 on bad usage or config.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from pipeline.errors import PipelineError

COMMANDS: dict[str, str] = {
    "validate": "pipeline.commands:validate",
    "plan": "pipeline.commands:plan_command",
    "schema": "pipeline.commands:schema",
    "emulator": "pipeline.emulator.cli:emulator",
    "submit": "pipeline.sweep_commands:submit",
    "status": "pipeline.sweep_commands:status",
    "harvest": "pipeline.sweep_commands:harvest",
    "results": "pipeline.sweep_commands:results",
    "retry": "pipeline.sweep_commands:retry",
    "cancel": "pipeline.sweep_commands:cancel",
    "run": "pipeline.sweep_commands:run",
    "report": "pipeline.sweep_commands:report",
    "doctor": "pipeline.doctor:doctor",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="boinc-pipeline")
@click.option(
    "--log-level",
    default="WARNING",
    envvar="BOINC_PIPELINE_LOG",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much to log to stderr [env BOINC_PIPELINE_LOG].",
)
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
def cli(log_level: str, log_json: bool) -> None:
    """Run parameter sweeps on a BOINC (boinc2docker) project and harvest the results.

    \b
    Examples:
      boinc-pipeline validate configs/examples/grid-csv.yaml
      boinc-pipeline plan configs/examples/grid-csv.yaml --format jsonl --limit 3
    """
    from pipeline.logs import configure

    configure(log_level, json_lines=log_json)


def main(argv: list[str] | None = None) -> None:
    """Run the command line; project errors become a message and their exit code."""
    try:
        cli.main(args=argv, prog_name="boinc-pipeline", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PipelineError as exc:
        from pipeline.logs import redact

        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
