"""Fixtures for the emulator tests: a fresh project on SQLite or MariaDB, and job helpers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline import boinc
from pipeline.emulator import Project


@pytest.fixture
def project(tmp_path: Path, boinc_db_url: str) -> Iterator[Project]:
    """A new emulated project in host image mode, on each BOINC database engine."""
    if os.geteuid() != 0:
        pytest.skip("the emulator's hosts need root for mount namespaces")
    proj = Project.init(tmp_path / "proj", boinc_db_url, tmp_path / "results", image_mode="host")
    try:
        yield proj
    finally:
        proj.close()


def b2d(
    project: Project, *args: str, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the project's bin/boinc2docker_create_work.py as a real subprocess."""
    script = str(project.root / "bin" / "boinc2docker_create_work.py")
    argv = [python, script, *args] if python else [script, *args]
    return subprocess.run(argv, cwd=project.root, capture_output=True, text=True, check=False)


def submit(project: Project, name: str, shell: str, *options: str) -> None:
    """Create one workunit running ``sh -c SHELL`` (1 result, quorum 1 unless overridden)."""
    defaults = ["--min_quorum", "1", "--target_nresults", "1"]
    proc = b2d(project, "--wu_name", name, *defaults, *options, "busybox", "sh", "-c", shell)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "workunit name:" not in proc.stdout


def wu_row(project: Project, name: str) -> Any:
    with project.engine().connect() as conn:
        return conn.execute(sa.select(boinc.workunit).where(boinc.workunit.c.name == name)).one()


def result_rows(project: Project, wu_name: str) -> list[Any]:
    wu = wu_row(project, wu_name)
    with project.engine().connect() as conn:
        return list(
            conn.execute(
                sa.select(boinc.result)
                .where(boinc.result.c.workunitid == wu.id)
                .order_by(boinc.result.c.id)
            )
        )


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
