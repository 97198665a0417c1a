"""The workers' parts on their own: settings, schedules, fenced locks, the beat guard, the tick."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.errors import ConfigError
from pipeline.spec import Schedule
from workers.beat import EXIT_BEAT_RUNNING, BeatGuard
from workers.locks import FencedLock, LockLost
from workers.schedule import Every, parse_schedule
from workers.settings import WorkerSettings
from workers.tasks import backoff

from .conftest import ROOT, VENV_BIN, wait_for

# -- settings -------------------------------------------------------------------


def test_settings_defaults_file_and_environment(tmp_path: Path) -> None:
    assert WorkerSettings.load({}).broker == "redis://localhost:6379/0"
    assert WorkerSettings.load({}).result_backend == "redis://localhost:6379/0"
    file = tmp_path / "workers.yaml"
    file.write_text(
        "broker: amqp://guest:guest@rabbit:5672//\ntick_interval: 5\nharvest_chunk: 50\n"
    )
    s = WorkerSettings.load(
        {"BOINC_PIPELINE_WORKERS_CONFIG": str(file), "BOINC_PIPELINE_TICK": "2"}
    )
    assert s.broker.startswith("amqp://")
    assert s.redis == "redis://localhost:6379/0"  # RabbitMQ broker: locks still need Redis
    assert s.tick_interval == 2.0  # the environment wins over the file
    assert s.harvest_chunk == 50


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"BOINC_PIPELINE_BROKER": "sqs://x"}, "broker 'sqs://x' is not supported"),
        ({"BOINC_PIPELINE_TICK": "soon"}, "BOINC_PIPELINE_TICK (setting 'tick_interval')"),
        (
            {"BOINC_PIPELINE_TIME_LIMIT": "600", "BOINC_PIPELINE_VISIBILITY": "300"},
            "visibility_timeout (300 s) must be longer than task_time_limit (600 s)",
        ),
    ],
)
def test_bad_settings_name_the_field(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=__import__("re").escape(needle)):
        WorkerSettings.load(env)


def test_unknown_key_in_the_settings_file(tmp_path: Path) -> None:
    file = tmp_path / "w.yaml"
    file.write_text("brokr: redis://x\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*'brokr'"):
        WorkerSettings.load({"BOINC_PIPELINE_WORKERS_CONFIG": str(file)})


# -- schedules ------------------------------------------------------------------


def _ts(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


def test_interval_schedule() -> None:
    every = parse_schedule(Schedule(interval="10m"), 60)
    assert every == Every(interval=600.0)
    assert every.is_due(None, 0)
    assert not every.is_due(1000, 1599)
    assert every.is_due(1000, 1600)
    assert parse_schedule(None, 42) == Every(interval=42)


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/10 * * * *", (2025, 1, 31, 23, 59), (2025, 2, 1, 0, 0)),
        ("0 3 * * *", (2025, 1, 31, 3, 0), (2025, 2, 1, 3, 0)),
        ("30 12 * * mon", (2025, 1, 31, 0, 0), (2025, 2, 3, 12, 30)),
        ("0 0 29 2 *", (2025, 1, 1, 0, 0), (2028, 2, 29, 0, 0)),
    ],
)
def test_cron_schedule(cron: str, after: tuple[int, ...], expected: tuple[int, ...]) -> None:
    every = parse_schedule(Schedule(cron=cron), 60)
    assert every.next_after(_ts(*after)) == _ts(*expected)
    assert not every.is_due(_ts(*after), _ts(*expected) - 1)
    assert every.is_due(_ts(*after), _ts(*expected))


def test_cron_field_celery_cannot_read() -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_schedule(Schedule(cron="99 * * * *"), 60)


def test_backoff_grows_is_capped_and_jittered() -> None:
    delays = [backoff(n, 2.0, 60.0) for n in range(10)]
    assert 1.0 <= delays[0] <= 2.0
    assert all(d <= 60.0 for d in delays)
    assert 30.0 <= delays[9] <= 60.0
    assert len({backoff(5, 2.0, 60.0) for _ in range(20)}) > 1


# -- locks ----------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Any:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_fenced_lock_excludes_renews_and_fences(client: Any) -> None:
    first = FencedLock(client, "app", ttl=1.0)
    assert first.acquire()
    second = FencedLock(client, "app", ttl=1.0)
    assert not second.acquire()
    time.sleep(1.6)  # past the expiry: the renewing thread kept it
    assert first.held()
    first.check()
    first.release()
    assert second.acquire()
    assert second.token > first.token  # fencing tokens only grow
    second.release()


def test_a_holder_whose_lock_was_taken_over_stops(client: Any) -> None:
    holder = FencedLock(client, "app", ttl=1.0)
    assert holder.acquire()
    assert holder._renewer is not None
    holder._renewer.stop()  # a frozen holder: it renews no more
    time.sleep(1.3)
    taker = FencedLock(client, "app", ttl=5.0)
    assert taker.acquire()
    with pytest.raises(LockLost, match=f"fencing token {holder.token}"):
        holder.check()
    holder.release()  # must not delete the new holder's key
    assert taker.held()
    taker.release()


def test_redis_emptied_means_the_lock_is_lost(client: Any) -> None:
    lock = FencedLock(client, "app", ttl=5.0)
    assert lock.acquire()
    client.flushdb()
    with pytest.raises(LockLost):
        lock.check()
    lock.release()


def test_beat_guard_takes_the_key_back_after_redis_was_emptied(client: Any) -> None:
    guard = BeatGuard(client, "bp:test:beat", ttl=3.0)
    assert guard.acquire()
    other = BeatGuard(client, "bp:test:beat", ttl=3.0)
    other.value = "another-host:1"  # a beat elsewhere
    assert not other.acquire()
    client.flushdb()
    wait_for(lambda: guard.holder() == guard.value, 5, "the beat key taken back")
    guard.release()
    assert guard.holder() is None


def test_a_second_beat_exits(tmp_path: Path, redis_url: str) -> None:
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "BOINC_PIPELINE_BROKER": redis_url,
        "BOINC_PIPELINE_STATE": f"sqlite:///{tmp_path / 'state.sqlite'}",
        "BOINC_PIPELINE_TICK": "5",
    }
    argv = [str(VENV_BIN / "celery"), "-A", "workers.app", "beat", "--loglevel", "INFO"]
    with (tmp_path / "first.log").open("wb") as log:
        first = subprocess.Popen(
            [*argv, "-s", str(tmp_path / "s1")], env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        wait_for(
            lambda: "beat lock" in (tmp_path / "first.log").read_text(), 30, "the first beat's lock"
        )
        second = subprocess.run(
            [*argv, "-s", str(tmp_path / "s2")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == EXIT_BEAT_RUNNING
        assert "another beat is running" in second.stderr
        assert first.poll() is None
    finally:
        first.terminate()
        first.wait(timeout=20)


def test_enqueue_helpers_import_without_a_broker() -> None:
    code = "import workers.enqueue as e; print(e.submit_async.__name__, e.harvest_async.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(ROOT), "BOINC_PIPELINE_BROKER": "redis://127.0.0.1:1/0"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["submit_async", "harvest_async"]


def test_key_prefix_covers_every_key_of_the_broker_backend_and_locks(
    client: Any, redis_url: str
) -> None:
    """Result keys are covered too: the Celery demo's test finds Redis empty after its cleanup."""
    from pipeline.settings import Settings
    from workers.app import make_app
    from workers.jobs import app_lock
    from workers.resources import Resources

    settings = WorkerSettings(broker=redis_url, key_prefix="bp-t1:")
    app = make_app(settings)
    try:
        app.send_task("boinc_pipeline.poll", args=["nobody", 1], ignore_result=True)
        assert app.control.ping(timeout=0.5) == []  # no worker: the pidbox keys only
        res = Resources(Settings("sqlite:///unused.sqlite", "store", "servers"), settings)
        lock = app_lock(res, "server", "app")
        assert lock.acquire()
        lock.release()
        client.set(res.key("last", 1), "1")
        keys = sorted(k.decode() for k in client.scan_iter(count=1000))
        assert any("boinc-pipeline" in k for k in keys)  # the queue holding the message
        assert any(":fence:" in k for k in keys)
        assert [k for k in keys if not k.startswith("bp-t1:")] == []
    finally:
        app.close()
    with pytest.raises(ConfigError, match="key_prefix"):
        WorkerSettings(broker=redis_url, key_prefix="a b")
