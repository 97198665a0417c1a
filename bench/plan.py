"""Planning speed and memory: a 1,000,000-point grid planned and streamed as jsonl to /dev/null.

Prints points per second for:
- baseline: a bare itertools.product loop building the same parameter dicts;
- plan: ``pipeline.plan.plan`` (canonical JSON, ids, duplicate check, names, argv,
  PlannedWorkunit objects);
- plan+jsonl: ``PlanStream.jsonl_chunks`` written to /dev/null, as
  ``boinc-pipeline plan --format jsonl`` does;
each as wall-clock and as CPU time of this process (the CPU figure is steadier on a
busy machine), best of ``--rounds`` rounds that run the three one after the other,
and the ratio of each to the baseline's time. Then how much the RSS of a child
process grows while planning (and while streaming to jsonl) 100,000 and 1,000,000
points: the difference is what grows with the sweep (the id check's 16 bytes per
distinct point).

Run: .venv/bin/python bench/plan.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.plan import plan  # noqa: E402
from pipeline.space import GridBlock, LinspaceHelper, RangeHelper  # noqa: E402
from pipeline.spec import SweepSpec  # noqa: E402

TARGET = 100_000
"""Points per second that planning must reach (issue 2)."""


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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds of this process) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def baseline(spec: SweepSpec) -> int:
    space = spec.parameters
    assert isinstance(space, GridBlock)
    x, y = space.grid["x"], space.grid["y"]
    assert isinstance(x, LinspaceHelper)
    assert isinstance(y, RangeHelper)
    xs, ys = x.linspace.values(), y.range.values()
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
        for lines in plan(spec).jsonl_chunks():
            n += out.write(lines)
    return n


def rss_while(n_x: int, what: str) -> tuple[int, int]:
    """Plan in a child process; return its RSS before planning and the largest RSS during it.

    The RSS is sampled every 65,536 workunits (or jsonl chunks of 4,096 lines) from
    /proc; the peak of the whole process (``ru_maxrss``) would hide planning's memory
    under the imports' high-water mark.
    """
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from bench.plan import make_spec, plan, rss;"
        f"spec = make_spec({n_x}, 1000); before = rss(); top = before;"
        f"it = plan(spec) if {what == 'plan'!r} else plan(spec).jsonl_chunks();"
        f"step = 65536 if {what == 'plan'!r} else 16\n"
        "for i, _ in enumerate(it):\n"
        "    if i % step == 0: top = max(top, rss())\n"
        "print(before, max(top, rss()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True
    )
    before, top = out.stdout.split()
    return int(before), int(top)


def rss() -> int:
    """Return this process's resident set size in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    spec = make_spec()
    n = spec.size
    runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "plan": [], "jsonl": []}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        runs["baseline"].append(timed(lambda: baseline(spec)))
        runs["plan"].append(timed(lambda: plan_only(spec)))
        runs["jsonl"].append(timed(lambda: plan_jsonl(spec)))
    load_after = os.getloadavg()[0]
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
    bw, bc = best["baseline"]
    print(f"points: {n:,}; load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"{'':36s}{'wall':>14s}{'CPU':>14s}{'wall ratio':>12s}{'CPU ratio':>11s}")
    labels = {
        "baseline": "baseline (itertools.product dicts)",
        "plan": "plan",
        "jsonl": "plan + jsonl to /dev/null",
    }
    for key, label in labels.items():
        w, c = best[key]
        print(f"{label:36s}{n / w:10,.0f} p/s{n / c:10,.0f} p/s{w / bw:11.1f}x{c / bc:10.1f}x")
    for key in ("plan", "jsonl"):
        w, c = best[key]
        print(
            f"{labels[key]} reaches {TARGET:,} points/s where the baseline runs at "
            f">= {TARGET * c / bc:,.0f} points/s (by the CPU ratio), "
            f">= {TARGET * w / bw:,.0f} (by the wall ratio)"
        )
    for what in ("plan", "jsonl"):
        (b1, t1), (b2, t2) = rss_while(100, what), rss_while(1000, what)
        print(
            f"RSS while {labels[what]}: 100,000 points +{(t1 - b1) / 1e6:.1f} MB, "
            f"1,000,000 points +{(t2 - b2) / 1e6:.1f} MB over {b2 / 1e6:.1f} MB before planning; "
            f"{((t2 - b2) - (t1 - b1)) / 900_000:.1f} bytes per extra point"
        )


if __name__ == "__main__":
    main()
