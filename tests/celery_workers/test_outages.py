"""Outages of Redis and of the state database in the middle of a run driven by beat and workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import grid_spec

from .conftest import Cluster, PrivatePostgres, PrivateRedis, submit_async, wait_for


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(tmp_path)
    pg.init()
    pg.start()
    yield pg
    pg.remove()


@pytest.mark.slow
def test_redis_restarted_empty_then_state_database_down_30s(
    make_cluster: Callable[..., Cluster],
    private_redis: PrivateRedis,
    private_postgres: PrivatePostgres,
) -> None:
    cluster = make_cluster(
        state_url=private_postgres.url,
        broker=private_redis.url,
        redis=private_redis.url,
        cushion=40,
    )
    cluster.start_daemons(hosts=4)
    # kombu 5 may end the worker with "Unrecoverable error" when Redis goes
    # away; the deployment restarts it (restart: unless-stopped), and so does this.
    cluster.start_worker("w1", concurrency=2, restart=True)
    cluster.start_beat()
    submit_async(cluster, grid_spec("outage", 8))

    def harvested() -> int:
        return cluster.counts("outage").get("harvested", 0)

    try:
        wait_for(lambda: harvested() >= 2, 90, "the first harvested points")
        private_redis.kill()
        time.sleep(1)
        private_redis.start()  # empty: no queue, no markers, no locks, no beat key
        at_restart = harvested()
        wait_for(lambda: harvested() > at_restart, 90, "progress after the Redis restart")

        private_postgres.stop()
        time.sleep(30)
        private_postgres.start()
        wait_for(lambda: cluster.counts("outage") == {"harvested": 16}, 150, "every point")
    except AssertionError:
        print(cluster.logs())
        raise
    cluster.assert_exactly_once("outage", 16)
    log = (cluster.tmp / "w1.log").read_text()
    assert "StateUnavailable" in log  # the outage was seen (translated at the state edge) ...
    assert "; retry " in log  # ... and retried
    assert cluster.procs["beat"].poll() is None, "the beat died with Redis"
