"""The preflight: each check's verdict against the emulator and against bad configs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import AppConfig, DbConfig
from pipeline.doctor import assimilated_apps, docker_verdict, run_checks
from pipeline.server import Server

from .conftest import Bench, make_bench


@pytest.fixture
def bench(tmp_path: Path, sqlite_url: str) -> Iterator[Bench]:
    b = make_bench(tmp_path, sqlite_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield b
    b.project.close()


def _checks(bench: Bench, **kw: object) -> dict[str, tuple[str, str]]:
    with Server(bench.server) as server:
        return {
            c.name: (c.status, c.detail + " " + c.fix)
            for c in run_checks(server, mode="batch", **kw)
        }  # type: ignore[arg-type]


def test_a_healthy_emulated_server_passes(bench: Bench) -> None:
    (bench.project.results_dir / "boinc2docker").mkdir()
    checks = _checks(bench, state_url=bench.settings.state_url)
    assert {k: v[0] for k, v in checks.items()} == {
        "transport": "ok",
        "boinc database": "ok",
        "app boinc2docker": "ok",
        "daemons for boinc2docker": "ok",
        "results boinc2docker": "ok",
        "docker engine": "skip",
        "state database": "ok",
    }


def test_missing_results_folder_fails_and_fix_creates_it(bench: Bench) -> None:
    shutil.rmtree(bench.project.results_dir / "boinc2docker", ignore_errors=True)
    status, text = _checks(bench)["results boinc2docker"]
    assert status == "fail"
    assert "permission bug" in text
    assert "chown boincadm" in text
    status, _ = _checks(bench, fix=True)["results boinc2docker"]
    assert status == "ok"
    assert (bench.project.results_dir / "boinc2docker").is_dir()


def test_custom_app_without_daemons_or_row_fails(bench: Bench) -> None:
    bench.server = bench.server.model_copy(update={"apps": {"myapp": AppConfig()}})
    checks = _checks(bench)
    assert checks["app myapp"][0] == "fail"
    assert checks["daemons for myapp"][0] == "fail"
    assert "script_assimilator --app myapp" in checks["daemons for myapp"][1]


def test_unreachable_database_fails(bench: Bench, tmp_path: Path) -> None:
    bad = DbConfig(url="mysql+pymysql://root@127.0.0.1:1/nowhere")
    bench.server = bench.server.model_copy(update={"boinc_db": bad})
    checks = _checks(bench)
    assert checks["boinc database"][0] == "fail"
    assert "app boinc2docker" not in checks


def test_daemon_parsing_and_docker_verdicts() -> None:
    xml = """<boinc><daemons>
      <daemon><cmd>feeder -d 3</cmd></daemon>
      <daemon><cmd>sample_trivial_validator -app a</cmd></daemon>
      <daemon><cmd>script_assimilator --app a --script "x y"</cmd></daemon>
      <daemon><cmd>script_assimilator --app b</cmd></daemon>
    </daemons></boinc>"""
    assert assimilated_apps(xml) == ({"a"}, {"a", "b"})
    assert docker_verdict("20.10.24+dfsg1", "1.41").status == "ok"
    modern = docker_verdict("25.0.3", "1.44")
    assert modern.status == "fail"
    assert "DOCKER_MIN_API_VERSION" in modern.fix
