"""The job launcher: private /root/shared per job, exit codes, CPU time, kill, shutdown."""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.emulator import runner


@pytest.fixture
def launcher() -> Iterator[runner.Launcher]:
    if os.geteuid() != 0:
        pytest.skip("the emulator's jobs need root for mount namespaces")
    runner.check_namespaces()
    lau = runner.Launcher()
    yield lau
    lau.close()


def _slot(base: Path, name: str, app: str) -> Path:
    slot = base / name
    (slot / "shared" / "results").mkdir(parents=True)
    (slot / "shared" / "boinc_app").write_text("#!/bin/sh\nset -e\n" + app)
    return slot


def _members(slot: Path) -> dict[str, bytes]:
    with tarfile.open(slot / "shared" / "results.tgz") as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_parallel_jobs_each_see_their_own_shared_folder(
    launcher: runner.Launcher, tmp_path: Path
) -> None:
    app = (
        "ls /root/shared > /root/shared/results/seen.txt\n"
        "cat /root/shared/id > /root/shared/results/id.txt\n"
        "sleep 0.3\n"
        "ls /root/shared/results > /root/shared/results/after.txt\n"
    )
    slots = []
    for i in range(3):
        slot = _slot(tmp_path, f"s{i}", app)
        (slot / "shared" / "id").write_text(f"job {i}\n")
        slots.append(slot)
    host_before = sorted(os.listdir(runner.SHARED))
    jobs = [launcher.start(slot, container=False) for slot in slots]
    for job in jobs:
        job.wait()
    for i, (slot, job) in enumerate(zip(slots, jobs, strict=True)):
        assert job.status == 0, (slot / "stderr.txt").read_text()
        files = _members(slot)
        assert files["id.txt"] == f"job {i}\n".encode()
        assert files["seen.txt"].split() == [b"boinc_app", b"id", b"results"]
        assert files["after.txt"].split() == [b"after.txt", b"id.txt", b"seen.txt"]
        assert job.cpu_time > 0
        assert job.elapsed >= 0.3
    assert sorted(os.listdir(runner.SHARED)) == host_before


def test_exit_status_no_archive_and_no_output(launcher: runner.Launcher, tmp_path: Path) -> None:
    failing = _slot(tmp_path, "fail", "echo oops >&2\nexit 3\n")
    empty = _slot(tmp_path, "empty", "echo 1 > /root/shared/results/x\n")
    jobs = [
        launcher.start(failing, container=False),
        launcher.start(empty, container=False, no_output=True),
    ]
    for job in jobs:
        job.wait()
    assert jobs[0].status == 3
    assert "oops" in (failing / "stderr.txt").read_text()
    assert not (failing / "shared" / "results.tgz").exists()
    assert jobs[1].status == 0
    assert _members(empty) == {}
    assert "Cannot stat" in (empty / "stderr.txt").read_text()


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # ESRCH: it exited while being read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def test_kill_stops_the_whole_job(launcher: runner.Launcher, tmp_path: Path) -> None:
    slot = _slot(tmp_path, "k", "sleep 60 &\necho $! > /root/shared/pid\nwait\n")
    job = launcher.start(slot, container=False)
    pid = _wait_for_pid(slot / "shared" / "pid")
    assert not job.poll()
    runner.finish(job)
    assert job.status == -9
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pid_alive(pid)


def test_closing_the_launcher_stops_running_jobs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the emulator's jobs need root for mount namespaces")
    lau = runner.Launcher()
    slot = _slot(tmp_path, "c", "echo $$ > /root/shared/pid\nsleep 60\n")
    lau.start(slot, container=False)
    pid = _wait_for_pid(slot / "shared" / "pid")
    lau.close()
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pid_alive(pid)


def test_a_dead_launcher_fails_its_jobs_and_is_restarted(
    launcher: runner.Launcher, tmp_path: Path
) -> None:
    slow = _slot(tmp_path, "slow", "echo $$ > /root/shared/pid\nexec sleep 60\n")
    job = launcher.start(slow, container=False)
    pid = _wait_for_pid(slow / "shared" / "pid")
    helper = launcher._proc  # the real launcher process, killed as a crash would
    assert helper is not None
    helper.kill()
    job.wait()
    assert job.status == 127
    # The emulator kills what the launcher started.
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _pid_alive(pid)
    again = _slot(tmp_path, "again", "echo ok > /root/shared/results/ok\n")
    job2 = launcher.start(again, container=False)
    job2.wait()
    assert job2.status == 0
    assert _members(again) == {"ok": b"ok\n"}


def test_a_job_outlives_another_emulators_container_job(
    launcher: runner.Launcher, tmp_path: Path
) -> None:
    # Another emulator (its own launcher) runs a container-mode job: its slot is
    # bound onto the host's /root/shared while a host-mode job starts here. When
    # that job ends, its slot is unmounted and removed; the host-mode job must
    # keep its own /root/shared (it used to lose its working folder and files).
    go = tmp_path / "go"
    wait_go = f"n=0; while [ ! -e {go} ] && [ $n -lt 400 ]; do sleep 0.025; n=$((n+1)); done\n"
    other = runner.Launcher()
    try:
        held = _slot(tmp_path / "other", "c", wait_go)
        container_job = other.start(held, container=True)
        mine = _slot(
            tmp_path,
            "h",
            "echo started > /root/shared/started\n"
            + wait_go
            + "sleep 0.2\n"
            + "pwd -P > /root/shared/results/pwd.txt\n"
            + "cat /root/shared/id > /root/shared/results/id.txt\n",
        )
        (mine / "shared" / "id").write_text("mine\n")
        job = launcher.start(mine, container=False)
        deadline = time.monotonic() + 10
        while not (mine / "shared" / "started").exists() and time.monotonic() < deadline:
            assert not job.poll(), (mine / "stderr.txt").read_text()
            time.sleep(0.02)
        go.touch()
        container_job.wait()
        assert container_job.status == 0, (held / "stderr.txt").read_text()
        shutil.rmtree(held)  # what the other emulator does with a finished slot
    finally:
        other.close()
    job.wait()
    assert job.status == 0, (mine / "stderr.txt").read_text()
    assert _members(mine) == {"pwd.txt": b"/root/shared\n", "id.txt": b"mine\n"}
