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
    "PlannedWorkunit": "pipeline.plan:PlannedWorkunit",
    "point_id": "pipeline.plan:point_id",
    "Sweep": "pipeline.api:Sweep",
    "status": "pipeline.api:status",
    "results": "pipeline.api:results",
    "Settings": "pipeline.settings:Settings",
    "ServerConfig": "pipeline.config:ServerConfig",
    "load_server_config": "pipeline.config:load_server_config",
    "PipelineError": "pipeline.errors:PipelineError",
}

__all__ = ["__version__", "plan", *sorted(_EXPORTS)]

# ``plan`` is both a submodule and the function users call: bind the function
# now, or the first ``import pipeline.plan`` anywhere would shadow it.
from pipeline.plan import plan  # noqa: E402


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
