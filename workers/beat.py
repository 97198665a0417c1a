"""The single-beat guard: a beat runs only while it holds a lock in Redis.

Two beats would queue every tick twice. When ``celery beat`` starts it takes
the key ``bp:<namespace>:beat`` (``SET NX`` with an expiry) and renews it every
third of the expiry; a second beat finds the key held and exits with status 3
and a message naming the holder. If the key disappears (Redis restarted
empty) the running beat takes it again; if another beat holds it (this one
was frozen past the expiry) this one stops itself. The tick also sets a
short-lived marker, so even two beats in the seconds of a hand-over queue
each tick once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from typing import Any

from celery import signals

from workers.locks import LockRenewer

__all__ = ["EXIT_BEAT_RUNNING", "BeatGuard"]

log = logging.getLogger(__name__)

#: Exit status of a beat that finds another beat running.
EXIT_BEAT_RUNNING = 3

_RENEW = """
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
if not v then
  return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0
end
return 0
"""


class BeatGuard:
    """The lock a beat holds for as long as it runs."""

    def __init__(self, client: Any, key: str, ttl: float) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(3000, int(ttl * 1000))
        self.value = f"{socket.gethostname()}:{os.getpid()}"
        self.renewer: LockRenewer | None = None

    def acquire(self) -> bool:
        """Take the key if free (or already ours) and start renewing it."""
        if not self.client.set(self.key, self.value, nx=True, px=self.ttl_ms):
            holder = self.holder()
            if holder != self.value:
                return False
        self.renewer = LockRenewer(self.renew, self.ttl_ms / 3000, on_lost=self.lost)
        self.renewer.start()
        return True

    def holder(self) -> str | None:
        """Who holds the key now (``host:pid``), or None."""
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    def renew(self) -> bool:
        """Extend the key, taking it again if Redis lost it; False if another beat holds it."""
        return bool(self.client.eval(_RENEW, 1, self.key, self.value, self.ttl_ms))

    def lost(self) -> None:
        """Another beat holds the key: stop this one."""
        log.critical("another beat (%s) holds %s; this beat stops", self.holder(), self.key)
        os.kill(os.getpid(), signal.SIGTERM)

    def release(self) -> None:
        """Stop renewing and delete the key if it is ours."""
        if self.renewer is not None:
            self.renewer.stop()
        if self.holder() == self.value:
            self.client.delete(self.key)


_guard: BeatGuard | None = None


@signals.beat_init.connect
def _take_beat_lock(sender: Any = None, **_kwargs: Any) -> None:
    """On ``celery beat`` start-up: hold the beat lock or exit."""
    global _guard
    from workers.app import worker_settings
    from workers.resources import resources

    res = resources(worker_settings)
    ttl = max(3 * worker_settings.tick_interval, 15.0)
    guard = BeatGuard(res.redis, res.key("beat"), ttl)
    if not guard.acquire():
        sys.stderr.write(
            f"boinc-pipeline: another beat is running ({guard.holder()} holds the key "
            f"{guard.key} in {worker_settings.redis}); run exactly one beat per deployment. "
            "This beat exits.\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_BEAT_RUNNING)
    _guard = guard
    log.info("beat lock %s held by %s", guard.key, guard.value)
