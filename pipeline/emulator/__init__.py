"""A stand-in BOINC server (boinc-server-docker, b2d variant) for dry runs and tests.

A project is a folder (``config.xml``, ``bin/``, ``download/``, ``upload/``) and a
database with BOINC's tables; the pipeline uses it exactly as a real server, by
running its ``bin/`` programs and reading its database. This package's Python API
is for tests and the demo harness::

    project = Project.init("demo-project", db_url=None, results_dir="demo-results")
    daemons = Daemons(project, hosts=4, faults=Faults.parse("client_error=0.1"))
    daemons.run_until_idle()

See ``docs/emulator.md`` for the command line, the image modes and ``--faults``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names and their modules, imported on first use: the ``bin/`` tools
#: import :mod:`pipeline.emulator.tools` only, and start faster without the daemons.
_EXPORTS: dict[str, str] = {
    "Clock": "pipeline.emulator.daemons",
    "Daemons": "pipeline.emulator.daemons",
    "status_counts": "pipeline.emulator.daemons",
    "FAULT_KINDS": "pipeline.emulator.faults",
    "Faults": "pipeline.emulator.faults",
    "DEFAULT_APP": "pipeline.emulator.project",
    "IMAGE_MODES": "pipeline.emulator.project",
    "Project": "pipeline.emulator.project",
}

__all__ = [
    "DEFAULT_APP",
    "FAULT_KINDS",
    "IMAGE_MODES",
    "Clock",
    "Daemons",
    "Faults",
    "Project",
    "status_counts",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
