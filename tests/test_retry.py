"""The retry helper: recoverable errors are retried with bounded, jittered backoff."""

from __future__ import annotations

import random

import pytest

from pipeline.errors import AuthenticationError, ConfigError, ConnectError, EngineError
from pipeline.retry import RetryPolicy, is_recoverable, retry


class Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_recoverable_flags() -> None:
    assert is_recoverable(ConnectError("x"))
    assert not is_recoverable(AuthenticationError("x"))
    assert is_recoverable(EngineError("busy", recoverable=True))
    assert not is_recoverable(EngineError("refused"))
    assert not is_recoverable(ValueError("x"))


def test_retries_recoverable_errors_then_succeeds() -> None:
    waits: list[float] = []
    fn = Flaky(ConnectError("a"), ConnectError("b"))
    seen: list[int] = []
    policy = RetryPolicy(attempts=5, base_delay=1, max_delay=10, rng=random.Random(1))
    assert retry(fn, policy, sleep=waits.append, on_retry=lambda e, n, d: seen.append(n)) == "done"
    assert fn.calls == 3
    assert seen == [1, 2]
    assert 0 <= waits[0] <= 1
    assert 0 <= waits[1] <= 2


def test_non_recoverable_error_is_raised_at_once() -> None:
    fn = Flaky(AuthenticationError("no"))
    with pytest.raises(AuthenticationError):
        retry(fn, RetryPolicy(), sleep=lambda s: None)
    assert fn.calls == 1


def test_attempts_bound() -> None:
    fn = Flaky(*[ConnectError(str(i)) for i in range(10)])
    with pytest.raises(ConnectError, match="2"):
        retry(fn, RetryPolicy(attempts=3), sleep=lambda s: None)
    assert fn.calls == 3


def test_time_budget_bound() -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    fn = Flaky(*[ConnectError(str(i)) for i in range(100)])
    policy = RetryPolicy(attempts=100, base_delay=4, max_delay=4, budget=10, rng=random.Random(3))
    with pytest.raises(ConnectError):
        retry(fn, policy, sleep=sleep, clock=lambda: now[0])
    assert now[0] <= 10
    assert 2 <= fn.calls < 100


def test_delays_grow_exponentially_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8, rng=random.Random(7))
    for failures, ceiling in [(1, 0.5), (2, 1), (3, 2), (4, 4), (5, 8), (9, 8)]:
        samples = [policy.delay(failures) for _ in range(300)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling  # jitter spans the range
        assert min(samples) < 0.2 * ceiling


def test_bad_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match="base_delay"):
        RetryPolicy(base_delay=-1)
