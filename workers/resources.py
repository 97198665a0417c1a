"""What a task needs, built from settings once per worker process: state DB, servers, store, Redis.

Celery's prefork pool forks its children from the main process, so nothing here
is created at import time: :func:`resources` builds one :class:`Resources` per
process id on first use. After a recoverable error a task calls
:meth:`Resources.reset` so that its retry starts from fresh connections.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from pipeline.config import ServerConfig, load_server_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.settings import Settings, resolve_server_path
from pipeline.state import StateDB
from workers.settings import WorkerSettings

__all__ = ["Resources", "is_recoverable", "resources"]

log = logging.getLogger(__name__)


def is_recoverable(exc: BaseException) -> bool:
    """Whether trying the same task later may succeed (a service down, a lock lost, a timeout).

    The project's errors say so themselves (``recoverable``); errors of the
    libraries underneath that mean "the database or Redis is unreachable right
    now" count as recoverable too. Anything else (a bad spec, a bug) is not.
    """
    import redis.exceptions
    import sqlalchemy.exc

    if isinstance(exc, PipelineError):
        return bool(exc.recoverable)
    if getattr(exc, "recoverable", False) is True:
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    transient = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.DisconnectionError,
        sqlalchemy.exc.TimeoutError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return True
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(exc, SoftTimeLimitExceeded)


class Resources:
    """The connections of one worker process, opened on first use and reused by its tasks."""

    def __init__(self, settings: Settings, worker: WorkerSettings) -> None:
        self.settings = settings
        self.worker = worker
        self._state: StateDB | None = None
        self._servers: dict[str, Any] = {}
        self._redis: Any = None
        #: A short namespace for Redis keys, so deployments sharing a Redis do not collide.
        self.namespace = hashlib.sha256(settings.state_url.encode()).hexdigest()[:10]

    @property
    def state(self) -> StateDB:
        """The pipeline's state database."""
        if self._state is None:
            self._state = StateDB(self.settings.state_url)
        return self._state

    @property
    def redis(self) -> Any:
        """A Redis client for locks and markers."""
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.worker.redis, socket_timeout=10, socket_connect_timeout=5
            )
        return self._redis

    def key(self, *parts: object) -> str:
        """A Redis key in this deployment's namespace (after the configured key prefix)."""
        return self.worker.key_prefix + ":".join(["bp", self.namespace, *map(str, parts)])

    def server_config(self, name: str) -> ServerConfig:
        """Load the server config a sweep recorded (a name in the servers folder, or a path)."""
        if not name:
            raise ConfigError("the sweep has no server recorded; submit it once with --server NAME")
        return load_server_config(resolve_server_path(name, self.settings.servers_dir))

    def server(self, name: str) -> Any:
        """The open connections to a server (a :class:`pipeline.server.Server`), reused."""
        server = self._servers.get(name)
        if server is None:
            from pipeline.server import Server

            server = Server(self.server_config(name))
            self._servers[name] = server
        return server

    def store(self) -> Any:
        """The result store, with the configured harvest lease."""
        from pipeline.store import ResultStore

        return ResultStore(
            self.state, self.settings.store_root, lease_seconds=self.worker.harvest_lease
        )

    def reset(self) -> None:
        """Close every connection; the next use opens fresh ones."""
        for server in self._servers.values():
            try:
                server.close()
            except Exception as exc:  # closing a broken connection
                log.debug("closing a server failed: %s", exc)
        self._servers.clear()
        if self._state is not None:
            self._state.close()
            self._state = None

    def close(self) -> None:
        """Close every connection, Redis included."""
        self.reset()
        if self._redis is not None:
            self._redis.close()
            self._redis = None


_current: tuple[int, Resources] | None = None


def resources(worker: WorkerSettings | None = None) -> Resources:
    """The resources of this process (built after a fork, never shared with the parent)."""
    global _current
    pid = os.getpid()
    if _current is None or _current[0] != pid:
        worker = worker or WorkerSettings.load()
        _current = (pid, Resources(worker.pipeline_settings(), worker))
    return _current[1]
