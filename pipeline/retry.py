"""One retry helper for the whole pipeline, driven by each error's ``recoverable`` flag.

``RetryPolicy`` is a value object (attempts, delays, total budget); ``retry``
calls a function until it succeeds, raises an error that is not recoverable, or
the policy is used up. Delays grow exponentially with full jitter
(``uniform(0, min(max_delay, base_delay * 2**n))``) so many workers that failed
together do not come back together. Celery tasks use ``is_recoverable`` and
``RetryPolicy.delay`` to decide ``self.retry(countdown=...)`` themselves.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.errors import ConfigError, PipelineError

__all__ = ["RetryPolicy", "is_recoverable", "retry"]

T = TypeVar("T")


def is_recoverable(exc: BaseException) -> bool:
    """Whether trying the same operation again later can help."""
    return isinstance(exc, PipelineError) and bool(exc.recoverable)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: attempts in all, delay bounds and a total budget (s)."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    budget: float = 120.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"attempts must be at least 1 (got {self.attempts!r})")
        for name in ("base_delay", "max_delay", "budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative (got {getattr(self, name)!r})")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure (1-based), with full jitter."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(failures - 1, 0)))
        return self.rng.uniform(0, ceiling)


def retry(
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    *,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it returns, retrying recoverable errors as ``policy`` allows.

    A non-recoverable error is raised at once; the last recoverable one is raised
    when attempts or the time budget run out. ``on_retry(error, failures, delay)``
    is called before each wait.
    """
    policy = policy or RetryPolicy()
    started = clock()
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            failures += 1
            if not is_recoverable(exc) or failures >= policy.attempts:
                raise
            wait = policy.delay(failures)
            if clock() - started + wait > policy.budget:
                raise
            if on_retry is not None:
                on_retry(exc, failures, wait)
            sleep(wait)
