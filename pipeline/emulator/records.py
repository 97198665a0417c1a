"""BOINC rows as the server leaves them, for tests and benchmarks that fill BOINC tables."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipeline import boinc

__all__ = ["assimilated_success", "neutral_row"]


def neutral_row(table: sa.Table, **values: Any) -> dict[str, Any]:
    """Return a row of a BOINC table: NOT NULL columns without a default 0 or '', then values.

    ``create_work`` leaves the columns it does not set at those values.
    """
    row: dict[str, Any] = {}
    for col in table.columns:
        if col.primary_key or col.nullable or col.server_default is not None:
            continue
        row[col.name] = "" if isinstance(col.type, sa.String) else 0
    row.update(values)
    return row


def assimilated_success(
    wu_id: int, wu_name: str, now: int, hostid: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a workunit row and its one result row after a success, as the daemons leave them.

    Reference, section 6: the result is OVER with outcome SUCCESS and valid; the
    workunit has it as canonical result, is assimilated and waits for no
    transition. The result is ``<wu>_0`` with id ``wu_id``, received a minute
    before ``now``.
    """
    workunit = neutral_row(
        boinc.workunit,
        id=wu_id,
        name=wu_name,
        create_time=now - 7200,
        appid=1,
        canonical_resultid=wu_id,
        assimilate_state=2,
        file_delete_state=1,
        transition_time=boinc.INT_MAX,
        min_quorum=1,
        target_nresults=1,
    )
    result = neutral_row(
        boinc.result,
        id=wu_id,
        name=f"{wu_name}_0",
        workunitid=wu_id,
        server_state=5,
        outcome=1,
        client_state=5,
        validate_state=1,
        hostid=hostid,
        cpu_time=100.0,
        elapsed_time=110.0,
        sent_time=now - 3600,
        received_time=now - 60,
        appid=1,
    )
    return workunit, result
