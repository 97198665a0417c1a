"""Planning speed and memory: a 1,000,000-point grid planned and streamed as jsonl to /dev/null.

Prints points per second for:
- baseline: a bare itertools.product loop building the same parameter dicts;
- plan: ``pipeline.plan.plan`` (canonical JSON, ids, duplicate check, names, argv);
- plan+jsonl: the same, each workunit written as a JSON line to /dev/null.
and the peak RSS of child processes planning 100,000 and 1,000,000 points (the
difference is what grows with the sweep: the 16 bytes per point of the id check).

Run: .venv/bin/python bench/plan.py
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.plan import plan  # noqa: E402
from pipeline.spec import SweepSpec  # noqa: E402


def make_spec(n_x: int = 1000, n_y: int = 1000) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "bench",
            "image": "python:alpine",
            "command": ["python", "/app/run.py", "--x={x}", "--y", "{y}"],
            "parameters": {
                "grid": {
                    "x": {"linspace": {"start": 0.0, "stop": 1.0, "num": n_x}},
                    "y": {"range": {"start": 0, "stop": n_y}},
                }
            },
        }
    )


def best_of(runs: int, fn) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def baseline(spec: SweepSpec) -> int:
    xs = spec.parameters.grid["x"].linspace.values()
    ys = spec.parameters.grid["y"].range.values()
    n = 0
    for combo in itertools.product(xs, ys):
        d = dict(zip(("x", "y"), combo, strict=True))
        n += len(d)
    return n


def plan_only(spec: SweepSpec) -> int:
    n = 0
    for _ in plan(spec):
        n += 1
    return n


def plan_jsonl(spec: SweepSpec) -> int:
    n = 0
    with open("/dev/null", "w") as out:
        for wu in plan(spec):
            out.write(
                json.dumps(
                    {
                        "wu_name": wu.wu_name,
                        "point_id": wu.point_id,
                        "attempt": wu.attempt,
                        "params": wu.params,
                        "argv": wu.argv,
                    }
                )
            )
            out.write("\n")
            n += 1
    return n


def child_peak_rss(n_x: int) -> int:
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[1]);"
        "from bench.plan import make_spec, plan_only;"
        f"plan_only(make_spec({n_x}, 1000));"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) * 1024


def main() -> None:
    spec = make_spec()
    n = spec.size
    t_base = best_of(2, lambda: baseline(spec))
    t_plan = best_of(2, lambda: plan_only(spec))
    t_jsonl = best_of(1, lambda: plan_jsonl(spec))
    print(f"points: {n:,}")
    print(f"baseline (itertools.product dicts): {n / t_base:12,.0f} points/s")
    print(f"plan:                               {n / t_plan:12,.0f} points/s")
    print(f"  ratio baseline/plan:              {t_plan / t_base:12.1f}x slower")
    print(f"plan + jsonl to /dev/null:          {n / t_jsonl:12,.0f} points/s")
    small, big = child_peak_rss(100), child_peak_rss(1000)
    print(f"peak RSS, 100,000 points:           {small / 1e6:12.1f} MB")
    print(f"peak RSS, 1,000,000 points:         {big / 1e6:12.1f} MB")
    print(f"  growth per extra point:           {(big - small) / 900_000:12.1f} bytes")


if __name__ == "__main__":
    main()
