"""Preflight checks of a server config: what is wrong, check by check, and how to fix it.

Each check returns a :class:`Check` with a status: ``ok``, ``warn`` (works, but
watch out), ``fail`` (the chosen mode cannot work) or ``skip`` (not applicable,
or an earlier check failed). :func:`run_checks` runs them in order; the command
line exits 0 only when none failed.

The daemon and Docker checks read the project's ``config.xml`` and run
``docker version`` through the same transport submission uses, so they see
what boinc2docker will see.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import click
import sqlalchemy as sa

from pipeline.boinc import app as app_table
from pipeline.boinc import result as result_table
from pipeline.boinc import workunit as workunit_table
from pipeline.errors import PipelineError

__all__ = ["Check", "assimilated_apps", "docker_verdict", "doctor", "run_checks"]

#: The Docker API version the stock apache image's Docker CLI (1.10.3) speaks.
CLIENT_API = (1, 22)


@dataclass(frozen=True)
class Check:
    """The outcome of one preflight check."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """Return the check as a JSON-ready dict."""
        return asdict(self)


def assimilated_apps(config_xml: str) -> tuple[set[str], set[str]]:
    """Return (apps with a validator, apps with an assimilator) named in ``<daemons>``."""
    # The project's own config.xml, read from the user's server; expat (>= 2.4.1)
    # refuses entity-expansion bombs.
    root = ET.fromstring(config_xml)  # noqa: S314
    validators: set[str] = set()
    assimilators: set[str] = set()
    for cmd in root.iterfind("./daemons/daemon/cmd"):
        words = shlex.split(cmd.text or "")
        if not words:
            continue
        program = posixpath.basename(words[0])
        apps = {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-app", "--app")}
        if "validator" in program:
            validators |= apps
        elif "assimilator" in program:
            assimilators |= apps
    return validators, assimilators


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def docker_verdict(engine_version: str, api_version: str) -> Check:
    """Judge an engine's version against the apache image's old Docker CLI (API 1.22)."""
    engine = _parse_version(engine_version)
    if engine and engine[0] >= 25:
        return Check(
            "docker engine",
            "fail",
            f"Docker Engine {engine_version} (API {api_version}) refuses API < 1.24 unless "
            "DOCKER_MIN_API_VERSION is set, and its `docker save` writes the OCI layout "
            "that boinc2docker cannot read",
            "set DOCKER_MIN_API_VERSION=1.22 in the engine's environment and restart it, "
            "and use submission mode `fast` (which reads both layouts)",
        )
    return Check("docker engine", "ok", f"Docker Engine {engine_version} (API {api_version})")


def run_checks(
    server: Any,
    *,
    mode: str,
    fix: bool = False,
    broker: str | None = None,
    state_url: str | None = None,
) -> Iterator[Check]:
    """Run every check against an open :class:`~pipeline.server.Server`, in order."""
    transport_ok = False
    try:
        res = server.transport.run(["sh", "-c", "id -un; pwd"], timeout=30)
        who, where = ([*res.stdout.decode().splitlines(), "?", "?"])[:2]
        transport_ok = True
        yield Check(
            "transport",
            "ok",
            f"{server.transport.url}: user {who} in {where} ({res.duration * 1000:.0f} ms)",
        )
    except PipelineError as exc:
        yield Check("transport", "fail", str(exc), "check the transport URL, keys and known_hosts")

    db_ok = False
    try:
        engine = server.boinc.engine
        with engine.connect() as conn:
            for table in (workunit_table, result_table, app_table):
                conn.execute(
                    sa.select(sa.func.count()).select_from(
                        sa.select(table.c.id).limit(1).subquery()
                    )
                )
        db_ok = True
        yield Check("boinc database", "ok", "can read workunit, result and app")
    except (sa.exc.SQLAlchemyError, PipelineError) as exc:
        text = str(getattr(exc, "orig", exc))
        yield Check(
            "boinc database",
            "fail",
            f"cannot read the BOINC tables: {text.splitlines()[0] if text else exc}",
            "check boinc_db.url, its password source, the SSH tunnel, and SELECT grants",
        )

    apps = sorted(server.config.apps)
    config_xml = None
    if transport_ok:
        try:
            config_xml = server.transport.run(["cat", "config.xml"], timeout=30).stdout.decode()
        except PipelineError as exc:
            yield Check("config.xml", "fail", f"cannot read config.xml in the project root: {exc}")
    for name in apps:
        yield from _app_checks(server, name, db_ok, config_xml, fix)

    if transport_ok:
        yield _docker_check(server, mode, config_xml)
    if state_url:
        yield _state_check(state_url)
    if broker:
        yield _broker_check(broker)


def _app_checks(
    server: Any, name: str, db_ok: bool, config_xml: str | None, fix: bool
) -> Iterator[Check]:
    if db_ok:
        try:
            appid = server.boinc.app_id(name)
            yield Check(f"app {name}", "ok", f"app id {appid}")
        except PipelineError as exc:
            yield Check(
                f"app {name}",
                "fail",
                str(exc),
                "add the app (bin/xadd) or fix the server config's apps",
            )
    if config_xml is not None:
        validators, assimilators = assimilated_apps(config_xml)
        missing = [
            kind
            for kind, apps in (("validator", validators), ("assimilator", assimilators))
            if name not in apps
        ]
        if missing:
            yield Check(
                f"daemons for {name}",
                "fail",
                f"config.xml's <daemons> has no {' or '.join(missing)} for app {name!r}: "
                "its results would never be validated or moved to /results",
                f"add <daemon><cmd>sample_trivial_validator -app {name}</cmd></daemon> and "
                f"<daemon><cmd>script_assimilator --app {name} --script "
                '"boinc2docker_assimilator files"</cmd></daemon>, then bin/stop && bin/start',
            )
        else:
            yield Check(f"daemons for {name}", "ok", "a validator and an assimilator name the app")
    yield _results_check(server, name, fix)


def _results_check(server: Any, name: str, fix: bool) -> Check:
    folder = posixpath.join(server.results_dir, name)
    transport = server.results_transport
    try:
        probe = transport.run(
            ["sh", "-c", 'test -d "$1" || exit 3; test -w "$1" || exit 4', "sh", folder],
            cwd="/",
            timeout=30,
            check=False,
        )
    except PipelineError as exc:
        return Check(f"results {name}", "fail", f"cannot check {folder}: {exc}")
    if probe.exit_code == 0:
        return Check(
            f"results {name}", "ok", f"{folder} exists and is writable by the project user"
        )
    problem = "does not exist" if probe.exit_code == 3 else "is not writable by the project user"
    if fix:
        made = transport.run(["mkdir", "-p", folder], cwd="/", timeout=30, check=False)
        if made.exit_code == 0:
            return Check(f"results {name}", "ok", f"{folder} {problem}: created it (--fix)")
    return Check(
        f"results {name}",
        "fail",
        f"{folder} {problem}: the assimilator will mark workunits done and lose their files "
        "(the upstream /results permission bug)",
        f"docker-compose exec apache sh -c 'mkdir -p {folder} && chown boincadm:boincadm {folder}' "
        "(or run doctor with --fix as a user who may)",
    )


def _docker_check(server: Any, mode: str, config_xml: str | None) -> Check:
    if config_xml and "<emulator_image_mode>host</emulator_image_mode>" in config_xml:
        return Check(
            "docker engine", "skip", "emulated server in host mode: jobs run without Docker"
        )
    res = server.transport.run(
        ["docker", "version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"],
        timeout=30,
        check=False,
    )
    if res.exit_code != 0:
        text = (res.stderr or res.stdout).decode("utf-8", "replace").strip()
        status = "fail" if mode in ("script", "batch") else "warn"
        return Check(
            "docker engine",
            status,
            "`docker version` failed on the server: "
            f"{text.splitlines()[-1] if text else res.exit_code}",
            "boinc2docker needs the Docker CLI and the engine's socket in the apache container",
        )
    parts = res.stdout.decode().split()
    return docker_verdict(parts[0] if parts else "?", parts[1] if len(parts) > 1 else "?")


def _state_check(url: str) -> Check:
    from pipeline.state import StateDB

    try:
        StateDB(url).close()
        return Check(
            "state database", "ok", sa.engine.make_url(url).render_as_string(hide_password=True)
        )
    except (sa.exc.SQLAlchemyError, PipelineError) as exc:
        return Check("state database", "fail", f"{exc}", "check BOINC_PIPELINE_STATE / --state")


def _broker_check(url: str) -> Check:
    probe: Callable[[], object]
    if url.startswith("redis"):
        import redis

        probe = redis.Redis.from_url(url, socket_connect_timeout=3).ping
    else:
        from kombu import Connection

        def probe() -> object:
            with Connection(url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
            return True

    try:
        probe()
        return Check("broker", "ok", url.split("@")[-1])
    except Exception as exc:
        return Check(
            "broker",
            "fail",
            f"{url.split('@')[-1]}: {exc}",
            "start the broker or fix BOINC_PIPELINE_BROKER",
        )


@click.command()
@click.option(
    "--server", required=True, help="Server config: a name in configs/servers/ or a path."
)
@click.option(
    "--mode",
    type=click.Choice(["script", "batch", "fast"]),
    default=None,
    help="The submission mode to check for (default: the server config's).",
)
@click.option("--fix", is_flag=True, help="Create missing results folders when allowed.")
@click.option("--state", default=None, envvar="BOINC_PIPELINE_STATE", help="State database URL.")
@click.option("--broker", default=None, envvar="BOINC_PIPELINE_BROKER", help="Celery broker URL.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(
    server: str, mode: str | None, fix: bool, state: str | None, broker: str | None, as_json: bool
) -> None:
    """Check that a server is ready: transport, database, app, daemons, /results, Docker.

    Exits 0 only when nothing needed for the chosen mode is wrong.

    \b
    Examples:
      boinc-pipeline doctor --server local-emulator
      boinc-pipeline doctor --server cosmo --mode fast --fix
    """
    from rich.console import Console
    from rich.table import Table

    from pipeline.config import load_server_config
    from pipeline.server import Server
    from pipeline.settings import Settings, resolve_server_path

    settings = Settings.from_env(state=state)
    config = load_server_config(resolve_server_path(server, settings.servers_dir))
    chosen = mode or config.mode
    with Server(config) as srv:
        checks = list(
            run_checks(srv, mode=chosen, fix=fix, broker=broker, state_url=settings.state_url)
        )
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        click.echo(
            json.dumps({"mode": chosen, "ok": not failed, "checks": [c.as_dict() for c in checks]})
        )
    else:
        colours = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
        table = Table(title=f"doctor: {config.name} (mode {chosen})")
        for column in ("check", "status", "detail", "how to fix"):
            table.add_column(column)
        for c in checks:
            table.add_row(c.name, f"[{colours[c.status]}]{c.status}[/]", c.detail, c.fix)
        Console().print(table)
    if failed:
        raise click.exceptions.Exit(1)
