"""`make demo` runs end to end: every point harvested, the report written."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.demo import run_demo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_harvests_every_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    data = tmp_path / "demo-data"
    assert run_demo(data, str(ROOT / "configs/examples/grid-csv.yaml"), timeout=240) == 0
    parts = sorted((data / "store" / "grid-csv").rglob("*.parquet"))
    assert parts
    rows = sum(pq.read_metadata(p).num_rows for p in parts)
    assert rows == 20
    assert "fig-progress" in (data / "report.html").read_text()
