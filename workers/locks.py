"""Locks in Redis with expiry, renewal and fencing tokens; the single-beat guard.

A :class:`FencedLock` is a Redis key set with ``SET NX PX``: its value is a
fencing token (a number from ``INCR`` on a counter key) and the holder's random
id. While held, a background thread renews the expiry every third of it; a
holder that stops (kill -9, a frozen machine) loses the lock when it expires.

BOINC cannot check a fencing token itself, so the holder checks it before
every write it makes to the server (:meth:`FencedLock.check`): if the key no
longer holds its own value (it expired and someone else took it, or Redis was
restarted empty) the holder stops with :class:`LockLost` before creating
anything more. The window left is one ``create`` call (one chunk); what could
go wrong in it is bounded: the cushion overshoots by at most one chunk, and a
workunit is never created twice, because submission's intents in the state
database make that impossible whatever the locks do.

The locks only keep two workers from filling the same shortfall; nothing that
must survive lives in Redis.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["FencedLock", "LockLost", "LockRenewer"]

log = logging.getLogger(__name__)

KEY_PREFIX = "bp:"

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class LockLost(Exception):
    """The lock expired or was taken by another holder; stop writing.

    Recoverable: the task that held it is retried later, and re-reads the state.
    """

    recoverable = True


class FencedLock:
    """One named lock in Redis with an expiry, a renewing thread and a fencing token.

    Its keys are ``<prefix>bp:lock:<name>`` and ``<prefix>bp:fence:bp:lock:<name>``.
    """

    def __init__(self, client: Any, name: str, ttl: float, *, prefix: str = "") -> None:
        self.client = client
        self.key = f"{prefix}{KEY_PREFIX}lock:{name}"
        self._fence = f"{prefix}{KEY_PREFIX}fence:{KEY_PREFIX}lock:{name}"
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.token = 0
        self.value = ""
        self._renewer: LockRenewer | None = None

    def acquire(self) -> bool:
        """Take the lock if free; on success start renewing it and return True."""
        token = int(self.client.incr(self._fence))
        value = f"{token}:{secrets.token_hex(8)}"
        if not self.client.set(self.key, value, nx=True, px=self.ttl_ms):
            return False
        self.token, self.value = token, value
        self._renewer = LockRenewer(self._renew, self.ttl_ms / 3000)
        self._renewer.start()
        return True

    def _renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 1, self.key, self.value, self.ttl_ms))

    def held(self) -> bool:
        """Whether the key still holds this holder's value."""
        current = self.client.get(self.key)
        if isinstance(current, bytes):
            current = current.decode()
        return bool(self.value) and current == self.value

    def check(self) -> None:
        """Raise :class:`LockLost` unless this holder still holds the lock."""
        if not self.held():
            raise LockLost(f"lock {self.key} (fencing token {self.token}) was lost")

    def release(self) -> None:
        """Stop renewing and delete the key if it is still ours."""
        if self._renewer is not None:
            self._renewer.stop()
            self._renewer = None
        if self.value:
            try:
                self.client.eval(_RELEASE, 1, self.key, self.value)
            except Exception as exc:  # the key expires by itself
                log.warning("could not release %s: %s", self.key, exc)
            self.value = ""

    def __enter__(self) -> FencedLock:
        return self

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class LockRenewer(threading.Thread):
    """A daemon thread calling ``renew()`` every ``every`` seconds until stopped or it fails."""

    def __init__(
        self,
        renew: Callable[[], bool],
        every: float,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="bp-lock-renewer", daemon=True)
        self.renew = renew
        self.every = every
        self.on_lost = on_lost
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                ok = self.renew()
            except Exception as exc:  # Redis away: try again next time
                log.warning("lock renewal failed: %s", exc)
                continue
            if not ok:
                log.warning("lock renewal found the lock gone")
                if self.on_lost is not None:
                    self.on_lost()
                return

    def stop(self) -> None:
        """Ask the thread to stop (it exits within ``every`` seconds)."""
        self._stop_event.set()
