"""boinc-pipeline: parameter sweeps on BOINC (boinc2docker) projects, results as tables.

The public API is listed once in ``__all__``; names are imported lazily so that
``import pipeline`` stays fast and optional drivers load only when used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS: dict[str, str] = {
    "plan": "pipeline.plan:plan",
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

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from pipeline.plan import plan as plan


class _Package(types.ModuleType):
    """The package's module type: ``pipeline.plan`` stays the function users call.

    ``plan`` is both a submodule and the public function. Importing the
    submodule would bind the package's ``plan`` attribute to the module; this
    refuses that binding (the module stays in ``sys.modules``), so the function
    can be imported lazily, like the other names, and ``import pipeline`` does
    not load NumPy.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "plan" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
