"""`make demo-celery`: the demo's sweep through real Celery workers on a real Redis."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import free_port

from pipeline.demo import EXIT_INTERRUPTED, EXIT_NO_REDIS, run_demo

ROOT = Path(__file__).resolve().parent.parent
SPEC = str(ROOT / "configs/examples/grid-csv.yaml")


def _processes_in(folder: Path) -> list[int]:
    """Process ids whose working folder is ``folder`` or below (the demo's workers run there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or a zombie
            continue
        if cwd == str(folder) or cwd.startswith(f"{folder}/"):
            found.append(int(entry.name))
    return found


def _redis_keys(url: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(count=1000))
    finally:
        client.close()


def test_without_redis_it_says_so_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/3"  # nothing listens there
    data = tmp_path / "demo-data"
    assert run_demo(data, SPEC, celery=True, redis_url=url) == EXIT_NO_REDIS
    out = " ".join(capsys.readouterr().out.split())
    assert f"The Celery demo needs Redis at {url}, which does not answer" in out
    assert "--redis URL" in out
    assert "`make demo` runs the same sweep without Redis" in out
    assert not data.exists()  # nothing was set up


@pytest.mark.slow
def test_the_workers_harvest_every_point_and_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.chdir(ROOT)
    data = tmp_path / "demo-data"
    assert run_demo(data, SPEC, timeout=240, celery=True, redis_url=redis_url) == 0
    parts = sorted((data / "store" / "grid-csv").rglob("*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in parts) == 20
    assert "fig-progress" in (data / "report.html").read_text()
    # The work went through the worker's tasks, down to the harvest chunks.
    log = (data / "worker.log").read_text()
    for task in ("submit", "top_up", "poll", "harvest", "harvest_chunk"):
        assert re.search(rf"Task boinc_pipeline\.{task}\[[^]]+\] succeeded", log), task
    assert "Warm shutdown" in log
    assert _processes_in(data.resolve()) == []
    assert _redis_keys(redis_url) == []


def test_ctrl_c_stops_the_workers_and_cleans_redis(tmp_path: Path, redis_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.demo", SPEC, "--celery", "--redis", redis_url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own group, so the SIGINT below is a terminal's Ctrl-C
    )
    data = (tmp_path / "demo-data").resolve()
    try:
        deadline = time.monotonic() + 120
        while "ready." not in _read(data / "worker.log"):
            assert proc.poll() is None, proc.communicate()[0].decode()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.2)
        assert _processes_in(data)  # the worker and its pool
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, out.decode()
    assert "demo interrupted; the emulator and the workers were stopped" in out.decode()
    assert _processes_in(data) == []
    assert _redis_keys(redis_url) == []


def test_an_error_stops_the_workers_and_cleans_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    import pipeline.demo

    data = tmp_path / "demo-data"
    seen: list[int] = []

    def broken(*_args: object) -> None:
        seen.extend(_processes_in(data.resolve()))
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(pipeline.demo, "_drive_celery", broken)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        run_demo(data, SPEC, celery=True, redis_url=redis_url)
    assert len(seen) >= 3  # the worker and its two pool processes were running
    assert _processes_in(data.resolve()) == []
    assert _redis_keys(redis_url) == []


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
