"""A sweep submitted to the emulator, tracked, harvested and read back as rows."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import grid_spec

from pipeline import boinc

from .conftest import Bench


def test_sweep_end_to_end(bench: Bench) -> None:
    with bench.sweep(grid_spec(n=3)) as sweep:
        report = sweep.submit()
        assert report.report.created == 6
        assert sweep.track().counts == {"queued": 6}
        bench.daemons().run_until_idle()
        assert sweep.track().counts == {"done": 6}
        harvest = sweep.harvest()
        assert (harvest.ingested, harvest.lost, harvest.rows) == (6, 0, 6)
        assert sweep.track().counts == {"harvested": 6}
        df = sweep.results().sort_values(["p.x", "p.y"]).reset_index(drop=True)
    assert list(df["z"]) == [x * y for x in (1, 2, 3) for y in (2, 5)]
    assert df["point_id"].is_unique
    # Metadata matches the BOINC result rows.
    with sa.create_engine(bench.server.boinc_db.url).connect() as conn:
        rows = {
            r.name: r
            for r in conn.execute(
                sa.select(boinc.result).where(boinc.result.c.outcome == boinc.Outcome.SUCCESS)
            )
        }
    for rec in df.itertuples():
        row = rows[rec.result_name]
        assert rec.hostid == row.hostid
        assert rec.cpu_time == row.cpu_time
        assert rec.received_time == row.received_time


def test_second_submit_and_harvest_change_nothing(bench: Bench) -> None:
    with bench.sweep(grid_spec(n=2)) as sweep:
        sweep.submit()
        again = sweep.submit()
        assert again.report.created == 0
        bench.daemons().run_until_idle()
        sweep.harvest()
        second = sweep.harvest()
        assert second.ingested == 0
        assert len(sweep.results()) == 4
