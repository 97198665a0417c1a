"""Fixtures for the pipeline's stages driven end to end against the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.api import Sweep
from pipeline.config import DbConfig, ServerConfig
from pipeline.emulator import Project
from pipeline.emulator.daemons import Daemons
from pipeline.emulator.faults import Faults
from pipeline.settings import Settings
from pipeline.spec import SweepSpec


@dataclass
class Bench:
    """An emulated server with its config, and the pipeline's own settings."""

    project: Project
    server: ServerConfig
    settings: Settings
    tmp: Path

    def sweep(self, spec: SweepSpec | dict[str, Any]) -> Sweep:
        if isinstance(spec, dict):
            spec = SweepSpec.model_validate(spec)
        return Sweep(spec, server=self.server, settings=self.settings)

    def daemons(self, faults: str = "", hosts: int = 2, clock_factor: float = 1.0) -> Daemons:
        return Daemons(
            self.project,
            hosts=hosts,
            faults=Faults.parse(faults) if faults else Faults(),
            clock_factor=clock_factor,
        )


def make_bench(tmp: Path, boinc_url: str, state_url: str, python: str = "python3") -> Bench:
    project = Project.init(tmp / "project", boinc_url, tmp / "results", image_mode="host")
    server = ServerConfig(
        name="emulated",
        transport=f"local://{project.root}",
        results=f"local://{project.results_dir}",
        boinc_db=DbConfig(url=boinc_url),
        mode="batch",
        python=python,
    )
    settings = Settings(state_url=state_url, store_root=str(tmp / "store"))
    return Bench(project, server, settings, tmp)


@pytest.fixture
def bench(tmp_path: Path, boinc_db_url: str) -> Iterator[Bench]:
    b = make_bench(tmp_path, boinc_db_url, f"sqlite:///{tmp_path / 'state.sqlite'}")
    yield b
    b.project.close()
