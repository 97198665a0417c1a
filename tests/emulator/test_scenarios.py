"""One scenario per fault, on SQLite and MariaDB, checked against BOINC 1.2.0's sequences.

The oracle is section 6 of boinc-reference.md (sequences observed on real daemons).
"""

from __future__ import annotations

import gzip
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import boinc
from pipeline.boinc import AssimilateState as A
from pipeline.boinc import ClientState as C
from pipeline.boinc import FileDeleteState as F
from pipeline.boinc import Outcome as O
from pipeline.boinc import ServerState as S
from pipeline.boinc import ValidateState as V
from pipeline.emulator import Daemons, Faults, Project

from .conftest import files_under, result_rows, submit, wu_row

OK_JOB = (
    "mkdir -p /root/shared/results/sub && echo 1.5 > /root/shared/results/out.txt"
    " && echo x > /root/shared/results/sub/y && echo hidden > /root/shared/results/.dot"
)


def _results_files(project: Project) -> list[str]:
    return files_under(project.results_dir)


def test_creation_then_success(project: Project) -> None:
    submit(project, "ok_wu", OK_JOB)
    wu = wu_row(project, "ok_wu")
    assert (wu.canonical_resultid, wu.assimilate_state, wu.error_mask) == (0, 0, 0)
    assert wu.transition_time == wu.create_time
    assert (wu.min_quorum, wu.target_nresults, wu.max_error_results) == (1, 1, 3)

    d = Daemons(project, hosts=2)
    d.clock.advance(1)
    d.transitioner_pass()
    wu = wu_row(project, "ok_wu")
    (r,) = result_rows(project, "ok_wu")
    assert r.name == "ok_wu_0"
    assert (r.server_state, r.outcome, r.client_state, r.report_deadline) == (S.UNSENT, 0, 0, 0)
    now = d.clock.now()
    assert abs(wu.transition_time - (now + int(1.5 * wu.delay_bound))) <= 2

    d.hosts_pass(wait=True)
    (r,) = result_rows(project, "ok_wu")
    assert (r.server_state, r.outcome, r.client_state, r.exit_status) == (
        S.OVER,
        O.SUCCESS,
        C.FILES_UPLOADED,
        0,
    )
    assert r.report_deadline == r.sent_time + wu.delay_bound
    assert r.received_time >= r.sent_time > 0
    assert r.elapsed_time > 0
    assert r.hostid in (1, 2)

    d.run_until_idle()
    wu = wu_row(project, "ok_wu")
    (r,) = result_rows(project, "ok_wu")
    assert (r.validate_state, r.file_delete_state) == (V.VALID, F.DONE)
    assert r.granted_credit > 0
    assert wu.canonical_resultid == r.id
    assert (wu.error_mask, wu.assimilate_state, wu.file_delete_state) == (0, A.DONE, F.DONE)
    assert wu.transition_time == boinc.INT_MAX
    (path,) = _results_files(project)
    app, day, fname = path.split("/")
    assert app == "boinc2docker"
    assert len(day) == 10
    parsed = boinc.parse_result_file(fname)
    assert parsed is not None
    assert parsed.result_name == "ok_wu_0"
    with tarfile.open(project.results_dir / path, "r:gz") as tar:
        assert sorted(tar.getnames()) == ["out.txt", "sub", "sub/y"]
        out = tar.extractfile("out.txt")
        assert out is not None
        assert out.read() == b"1.5\n"
    # The file deleter removed the per-job files but kept the sticky image file.
    left = files_under(project.download_dir)
    assert [p for p in left if "boinc_app_" in p or "vbox_job_" in p] == []
    assert any("/image_" in p for p in left)
    assert files_under(project.upload_dir) == []


def test_quorum_two_needs_two_hosts(project: Project) -> None:
    submit(project, "q2", OK_JOB, "--min_quorum", "2", "--target_nresults", "2")
    d = Daemons(project, hosts=1)
    d.run_until_idle()
    rows = result_rows(project, "q2")
    assert [(r.server_state, r.outcome) for r in rows] == [(S.OVER, O.SUCCESS), (S.UNSENT, 0)]
    assert wu_row(project, "q2").canonical_resultid == 0
    d2 = Daemons(project, hosts=2)
    d2.run_until_idle()
    rows = result_rows(project, "q2")
    assert {r.hostid for r in rows} == {1, 2}
    assert [r.validate_state for r in rows] == [V.VALID, V.VALID]
    wu = wu_row(project, "q2")
    assert wu.canonical_resultid == rows[0].id
    assert wu.assimilate_state == A.DONE
    assert len(_results_files(project)) == 1  # non-canonical results are not copied


def test_job_exit_code_fails_after_max_errors(project: Project) -> None:
    submit(project, "bad", "exit 3", "--max_error_results", "2")
    d = Daemons(project, hosts=3)
    d.clock.advance(1)
    d.transitioner_pass()
    d.hosts_pass(wait=True)
    (r0,) = result_rows(project, "bad")
    assert (r0.server_state, r0.outcome, r0.client_state, r0.exit_status) == (
        S.OVER,
        O.CLIENT_ERROR,
        C.COMPUTE_ERROR,
        3,
    )
    assert r0.validate_state == V.INVALID
    d.clock.advance(1)
    d.transitioner_pass()
    assert [r.name for r in result_rows(project, "bad")] == ["bad_0", "bad_1"]
    assert wu_row(project, "bad").error_mask == 0
    d.run_until_idle()
    rows = result_rows(project, "bad")
    assert [r.name for r in rows] == ["bad_0", "bad_1", "bad_2"]
    assert all((r.outcome, r.exit_status) == (O.CLIENT_ERROR, 3) for r in rows)
    wu = wu_row(project, "bad")
    assert wu.error_mask == boinc.ErrorMask.TOO_MANY_ERROR_RESULTS
    assert (wu.canonical_resultid, wu.assimilate_state, wu.file_delete_state) == (0, A.DONE, F.DONE)
    assert all(r.file_delete_state == F.DONE for r in rows)
    assert _results_files(project) == []


def test_error_then_success_is_not_a_failure(
    project: Project, tmp_path: pytest.TempPathFactory
) -> None:
    flag = f"/tmp/emulator-flag-{wu_row.__name__}-{id(project)}"
    submit(
        project,
        "flaky",
        f"test -f {flag} || {{ touch {flag}; exit 5; }}; "
        f"echo ok > /root/shared/results/r.txt; rm -f {flag}",
    )
    Daemons(project, hosts=2).run_until_idle()
    rows = result_rows(project, "flaky")
    assert [(r.outcome, r.exit_status) for r in rows] == [(O.CLIENT_ERROR, 5), (O.SUCCESS, 0)]
    wu = wu_row(project, "flaky")
    assert (wu.error_mask, wu.canonical_resultid, wu.assimilate_state) == (0, rows[1].id, A.DONE)


def test_no_reply_times_out_and_is_replaced(project: Project) -> None:
    submit(project, "silent", OK_JOB, "--delay_bound", "3600")
    d = Daemons(project, hosts=2, faults=Faults.parse("no_reply=1"))
    d.run_until_idle()
    (r,) = result_rows(project, "silent")
    assert (r.server_state, r.report_deadline) == (S.IN_PROGRESS, r.sent_time + 3600)
    d.clock.advance(3601)
    d.transitioner_pass()
    rows = result_rows(project, "silent")
    assert (rows[0].server_state, rows[0].outcome, rows[0].client_state) == (
        S.OVER,
        O.NO_REPLY,
        C.NEW,
    )
    assert (rows[1].name, rows[1].server_state) == ("silent_1", S.UNSENT)
    assert wu_row(project, "silent").error_mask == 0
    # Healthy hosts now: the replacement succeeds.
    Daemons(project, hosts=2).run_until_idle()
    wu = wu_row(project, "silent")
    assert wu.canonical_resultid == result_rows(project, "silent")[1].id
    assert wu.assimilate_state == A.DONE
    assert len(_results_files(project)) == 1


def test_no_reply_forever_hits_max_total_results(project: Project) -> None:
    submit(project, "lost", OK_JOB, "--delay_bound", "100", "--max_total_results", "3")
    d = Daemons(project, hosts=3, faults=Faults.parse("no_reply=1"))
    for _ in range(4):
        d.run_until_idle()
        d.clock.advance(101)
    d.run_until_idle()
    rows = result_rows(project, "lost")
    assert [r.outcome for r in rows] == [O.NO_REPLY] * 3
    wu = wu_row(project, "lost")
    assert wu.error_mask == boinc.ErrorMask.TOO_MANY_TOTAL_RESULTS
    assert wu.assimilate_state == A.DONE


def test_cancel_jobs(project: Project) -> None:
    submit(project, "c_a", OK_JOB)
    submit(project, "c_b", OK_JOB)
    d = Daemons(project, hosts=0)
    d.clock.advance(1)
    d.transitioner_pass()
    a, b = wu_row(project, "c_a"), wu_row(project, "c_b")
    cancel = str(project.root / "bin" / "cancel_jobs")
    assert subprocess.run([cancel, str(a.id), str(b.id)], check=False).returncode == 0
    for name in ("c_a", "c_b"):
        (r,) = result_rows(project, name)
        assert (r.server_state, r.outcome) == (S.OVER, O.DIDNT_NEED)
        assert wu_row(project, name).error_mask == boinc.ErrorMask.CANCELLED
    d.run_until_idle()
    for name in ("c_a", "c_b"):
        wu = wu_row(project, name)
        assert (wu.assimilate_state, wu.canonical_resultid, wu.transition_time) == (
            A.DONE,
            0,
            boinc.INT_MAX,
        )


def test_client_error_fault(project: Project) -> None:
    submit(project, "ce", OK_JOB, "--max_error_results", "0")
    Daemons(project, hosts=1, faults=Faults.parse("client_error=1:7")).run_until_idle()
    (r,) = result_rows(project, "ce")
    assert (r.outcome, r.client_state, r.exit_status, r.validate_state) == (
        O.CLIENT_ERROR,
        C.COMPUTE_ERROR,
        7,
        V.INVALID,
    )
    wu = wu_row(project, "ce")
    assert (wu.error_mask, wu.assimilate_state) == (boinc.ErrorMask.TOO_MANY_ERROR_RESULTS, A.DONE)


@pytest.mark.parametrize("kind", ["corrupt", "truncate"])
def test_broken_archive_is_assimilated_as_uploaded(project: Project, kind: str) -> None:
    submit(project, "arch", OK_JOB)
    Daemons(project, hosts=1, faults=Faults.parse(f"{kind}=1")).run_until_idle()
    (r,) = result_rows(project, "arch")
    assert (r.outcome, r.validate_state) == (O.SUCCESS, V.VALID)
    assert wu_row(project, "arch").assimilate_state == A.DONE
    (path,) = _results_files(project)
    with pytest.raises((tarfile.TarError, OSError, EOFError, zlib.error)):
        _read_all(project.results_dir / path)


def _read_all(path: Path) -> None:
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            fh = tar.extractfile(member)
            if fh is not None:
                fh.read()


def test_no_output_uploads_an_empty_archive(project: Project) -> None:
    submit(project, "empty", OK_JOB)
    Daemons(project, hosts=1, faults=Faults.parse("no_output=1")).run_until_idle()
    (r,) = result_rows(project, "empty")
    assert r.outcome == O.SUCCESS
    (path,) = _results_files(project)
    with tarfile.open(project.results_dir / path, "r:gz") as tar:
        assert tar.getnames() == []
    assert b"Cannot stat" in r.stderr_out


def test_job_without_results_folder_is_client_error(project: Project) -> None:
    submit(project, "nores", "rm -rf /root/shared/results")
    Daemons(project, hosts=1).run_until_idle()
    r = result_rows(project, "nores")[0]
    assert (r.outcome, r.client_state, r.exit_status) == (O.CLIENT_ERROR, C.COMPUTE_ERROR, 0)


def test_results_permission_bug_loses_the_file(project: Project) -> None:
    submit(project, "perm", OK_JOB)
    Daemons(project, hosts=1, faults=Faults.parse("results_permission=1")).run_until_idle()
    wu = wu_row(project, "perm")
    (r,) = result_rows(project, "perm")
    assert (wu.canonical_resultid, wu.error_mask, wu.assimilate_state) == (r.id, 0, A.DONE)
    assert _results_files(project) == []
    assert files_under(project.upload_dir) == []  # the file deleter removed it


def test_slow_host_reports_late(project: Project) -> None:
    submit(project, "slow", OK_JOB, "--delay_bound", "1000")
    d = Daemons(project, hosts=1, faults=Faults.parse("slow=1:5000"))
    d.run_until_idle()
    (r,) = result_rows(project, "slow")
    assert r.server_state == S.IN_PROGRESS
    assert d.pending_reports() == 1
    d.clock.advance(1001)
    d.transitioner_pass()
    rows = result_rows(project, "slow")
    assert (rows[0].outcome, len(rows)) == (O.NO_REPLY, 2)
    d.clock.advance(4000)
    d.run_until_idle()
    rows = result_rows(project, "slow")
    # The late report is accepted (received_time was 0), like BOINC's scheduler does.
    assert (rows[0].server_state, rows[0].outcome, rows[0].client_state) == (
        S.OVER,
        O.SUCCESS,
        C.FILES_UPLOADED,
    ), rows[0].stderr_out
    assert wu_row(project, "slow").assimilate_state == A.DONE


def test_duplicate_report_changes_nothing(project: Project) -> None:
    submit(project, "dup", OK_JOB)
    d = Daemons(project, hosts=1, faults=Faults.parse("duplicate_report=1,slow=1:10"))
    d.run_until_idle()
    assert d.pending_reports() == 2
    d.clock.advance(10)
    d.hosts_pass()
    assert d.pending_reports() == 0
    (r,) = result_rows(project, "dup")
    assert (r.outcome, r.received_time > 0) == (O.SUCCESS, True)
    with project.engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(boinc.result)).scalar() == 1


def test_status_counts_from_the_database(project: Project) -> None:
    from pipeline.emulator import status_counts

    submit(project, "s1", OK_JOB)
    Daemons(project, hosts=1).run_until_idle()
    counts = status_counts(project)
    assert counts["workunits"] == {"total": 1, "done": 1, "failed": 0, "pending": 0}
    assert counts["result.outcome"] == {"1 SUCCESS": 1}


def test_gzip_helper_matches_gzip_n() -> None:
    from pipeline.emulator.tools import _gzip_n

    data = b"layer bytes" * 100
    assert _gzip_n(data) == subprocess.run(
        ["gzip", "-n", "-c"], input=data, capture_output=True, check=True
    ).stdout[:0] + _gzip_n(data)
    assert gzip.decompress(_gzip_n(data)) == data
    assert _gzip_n(data)[4:8] == b"\0\0\0\0"  # no time stamp
