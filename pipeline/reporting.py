"""Gather a sweep's data from the state database and the store, and write its HTML report.

:mod:`pipeline.report` renders; this module only loads: the points and their
states, every attempt with its times, and the harvested rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.api import Sweep
from pipeline.errors import HarvestError
from pipeline.report import ReportData, write_report
from pipeline.space import GridBlock

__all__ = ["report_data", "write_sweep_report"]


def report_data(sweep: Sweep) -> ReportData:
    """Load everything the report shows for one sweep version (no server needed)."""
    import pandas as pd

    record = sweep.record_if_known()
    grid = sweep.spec.parameters
    grid_params = list(grid.grid) if isinstance(grid, GridBlock) else []
    try:
        results = sweep.results()
    except HarvestError:  # parts that disagree on a type: the rest of the report still helps
        results = pd.DataFrame()
    return ReportData(
        sweep=record.name,
        version=record.version,
        generated_at=time.time(),
        spec=record.spec,
        grid_params=grid_params,
        points=sweep.status(),
        attempts=pd.DataFrame(sweep.state.attempt_rows(record.id)),
        results=results,
    )


def write_sweep_report(sweep: Sweep, path: str | Path, **kwargs: Any) -> Path:
    """Write a sweep's self-contained HTML report to ``path``; return the path."""
    return write_report(report_data(sweep), Path(path), **kwargs)
