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

from pipeline.emulator.daemons import Clock, Daemons, status_counts
from pipeline.emulator.faults import FAULT_KINDS, Faults
from pipeline.emulator.project import DEFAULT_APP, IMAGE_MODES, Project

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
