"""The workers' settings, read once from the environment and an optional YAML file.

Every value has an environment variable; a YAML file named by
``BOINC_PIPELINE_WORKERS_CONFIG`` may give the same keys (lower case, without
the prefix), and the environment wins over the file::

    # workers.yaml
    broker: redis://redis:6379/0
    tick_interval: 30
    task_time_limit: 1800

=================================  ==========================  ===================================
variable                           default                     meaning
=================================  ==========================  ===================================
``BOINC_PIPELINE_BROKER``          ``redis://localhost:6379/0``  Celery broker (``redis://`` or
                                                               ``amqp://`` for RabbitMQ)
``BOINC_PIPELINE_RESULT_BACKEND``  the Redis URL               where task results are kept
``BOINC_PIPELINE_REDIS``           the broker if Redis, else   Redis for locks, the beat guard
                                   ``redis://localhost:6379/0``  and the de-duplication markers
``BOINC_PIPELINE_TICK``            ``30``                      seconds between two ``tick`` runs
``BOINC_PIPELINE_DEFAULT_EVERY``   ``60``                      how often a sweep without
                                                               ``submit.schedule`` is serviced
``BOINC_PIPELINE_TIME_LIMIT``      ``1800``                    hard time limit of any task (s)
``BOINC_PIPELINE_VISIBILITY``      ``7200``                    Redis visibility timeout (s); must
                                                               exceed the time limit
``BOINC_PIPELINE_LOCK_TTL``        ``60``                      expiry of a top-up lock (renewed
                                                               every third of it while held)
``BOINC_PIPELINE_PENDING_TTL``     ``600``                     how long the tick waits for a
                                                               task it queued before queuing
                                                               another of the same kind
``BOINC_PIPELINE_HARVEST_CHUNK``   ``200``                     results per harvest chunk task
``BOINC_PIPELINE_HARVEST_LEASE``   ``300``                     lease of a harvest claim (s)
``BOINC_PIPELINE_MAX_RETRIES``     ``8``                       retries of a recoverable failure
``BOINC_PIPELINE_RETRY_BACKOFF``   ``2``                       first retry delay (s), doubled
                                                               each time, with full jitter
``BOINC_PIPELINE_RETRY_MAX``       ``300``                     longest retry delay (s)
``BOINC_PIPELINE_KEY_PREFIX``      empty                       prefix of every Redis key the
                                                               broker, the result backend and the
                                                               locks use (several deployments,
                                                               or a demo, on one Redis database)
=================================  ==========================  ===================================

The state database, result store and server-config folder come from
:class:`pipeline.settings.Settings` (``BOINC_PIPELINE_STATE``,
``BOINC_PIPELINE_STORE``, ``BOINC_PIPELINE_SERVERS``), the same variables the
command line reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError
from pipeline.settings import Settings

__all__ = ["DEFAULT_BROKER", "ENV_PREFIX", "WorkerSettings"]

DEFAULT_BROKER = "redis://localhost:6379/0"
ENV_PREFIX = "BOINC_PIPELINE_"
CONFIG_ENV = "BOINC_PIPELINE_WORKERS_CONFIG"

#: Field name -> environment variable suffix.
_ENV_NAMES = {
    "broker": "BROKER",
    "result_backend": "RESULT_BACKEND",
    "redis": "REDIS",
    "tick_interval": "TICK",
    "default_every": "DEFAULT_EVERY",
    "task_time_limit": "TIME_LIMIT",
    "visibility_timeout": "VISIBILITY",
    "lock_ttl": "LOCK_TTL",
    "pending_ttl": "PENDING_TTL",
    "harvest_chunk": "HARVEST_CHUNK",
    "harvest_lease": "HARVEST_LEASE",
    "max_retries": "MAX_RETRIES",
    "retry_backoff": "RETRY_BACKOFF",
    "retry_max": "RETRY_MAX",
    "key_prefix": "KEY_PREFIX",
}


@dataclass(frozen=True)
class WorkerSettings:
    """Broker, Redis, timings and limits of the Celery workers and beat."""

    broker: str = DEFAULT_BROKER
    result_backend: str = ""
    redis: str = ""
    tick_interval: float = 30.0
    default_every: float = 60.0
    task_time_limit: float = 1800.0
    visibility_timeout: float = 7200.0
    lock_ttl: float = 60.0
    pending_ttl: float = 600.0
    harvest_chunk: int = 200
    harvest_lease: float = 300.0
    max_retries: int = 8
    retry_backoff: float = 2.0
    retry_max: float = 300.0
    key_prefix: str = ""

    def __post_init__(self) -> None:
        if not self.broker.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
            raise ConfigError(
                f"broker {self.broker!r} is not supported; use redis://HOST:PORT/DB or "
                "amqp://USER:PASSWORD@HOST:PORT/VHOST (RabbitMQ)"
            )
        if not self.redis:
            redis = self.broker if self.broker.startswith("redis") else DEFAULT_BROKER
            object.__setattr__(self, "redis", redis)
        if not self.redis.startswith(("redis://", "rediss://")):
            raise ConfigError(f"redis {self.redis!r} must be a redis:// or rediss:// URL")
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis)
        for name in ("tick_interval", "default_every", "task_time_limit", "lock_ttl"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.visibility_timeout <= self.task_time_limit:
            raise ConfigError(
                f"visibility_timeout ({self.visibility_timeout:g} s) must be longer than "
                f"task_time_limit ({self.task_time_limit:g} s): Redis would hand a task that "
                "is still running to a second worker"
            )
        if self.key_prefix and not all(c.isalnum() or c in "-_.:" for c in self.key_prefix):
            raise ConfigError(
                f"key_prefix {self.key_prefix!r} may hold only letters, digits and - _ . :"
            )
        if self.harvest_chunk < 1 or self.max_retries < 0:
            raise ConfigError("harvest_chunk must be at least 1 and max_retries at least 0")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read the YAML file named by ``BOINC_PIPELINE_WORKERS_CONFIG`` then the environment."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = env.get(CONFIG_ENV)
        if path:
            values.update(_read_file(Path(path)))
        for name, suffix in _ENV_NAMES.items():
            raw = env.get(ENV_PREFIX + suffix)
            if raw is not None and raw != "":
                values[name] = raw
        return cls(**{k: _convert(k, v, f"{ENV_PREFIX}{_ENV_NAMES[k]}") for k, v in values.items()})

    def pipeline_settings(self) -> Settings:
        """The state database, result store and server folder, from the same environment."""
        return Settings.from_env()


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{CONFIG_ENV}: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    unknown = sorted(set(data) - set(_ENV_NAMES))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(_ENV_NAMES))}"
        )
    return data


def _convert(name: str, value: Any, where: str) -> Any:
    kind = {f.name: f.type for f in fields(WorkerSettings)}[name]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} (setting {name!r}): {value!r} is not a {kind}") from None
    return str(value)
