"""boinc-pipeline: parameter sweeps on BOINC (boinc2docker) projects, results as tables.

The public API is listed once in ``__all__``; names are imported lazily so that
``import pipeline`` stays fast and optional drivers load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
    "load_spec": "pipeline.spec:load_spec",
    "SweepSpec": "pipeline.spec:SweepSpec",
    "plan": "pipeline.plan:plan",
    "PlannedWorkunit": "pipeline.plan:PlannedWorkunit",
    "point_id": "pipeline.plan:point_id",
    "PipelineError": "pipeline.errors:PipelineError",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
