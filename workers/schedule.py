"""When a sweep is due for service: its ``submit.schedule`` (an interval or a cron line).

Pure functions of the schedule, the time of the last run and now; the tick
keeps the last-run times in Redis, so an empty Redis only makes every sweep due
at once, which is harmless (every task is idempotent).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError
from pipeline.spec import Schedule

__all__ = ["Every", "parse_schedule"]

_CRON_NAMES = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


@dataclass(frozen=True)
class Every:
    """A sweep's service schedule: ``interval`` seconds, or a five-field ``cron`` line (UTC)."""

    interval: float | None = None
    cron: str | None = None

    def is_due(self, last_run: float | None, now: float) -> bool:
        """Whether a sweep last serviced at ``last_run`` (None: never) is due at ``now``."""
        if last_run is None:
            return True
        if self.interval is not None:
            return now - last_run >= self.interval
        return self.next_after(last_run) <= now

    def next_after(self, moment: float) -> float:
        """The first time after ``moment`` the schedule fires (epoch seconds)."""
        if self.interval is not None:
            return moment + self.interval
        assert self.cron is not None
        return _cron_next(self.cron, moment)


def parse_schedule(schedule: Schedule | None, default_every: float) -> Every:
    """Turn a spec's schedule (or none: every ``default_every`` seconds) into an :class:`Every`."""
    if schedule is None:
        return Every(interval=default_every)
    if schedule.interval is not None:
        return Every(interval=float(schedule.interval))
    assert schedule.cron is not None
    _crontab(schedule.cron)  # fail early on a field celery cannot read
    return Every(cron=schedule.cron)


def _crontab(line: str) -> Any:
    from celery.schedules import ParseException, crontab

    fields = ["*" if f == "?" else f for f in line.split()]
    try:
        tab = crontab(**dict(zip(_CRON_NAMES, fields, strict=True)))
        tab.remaining_delta(dt.datetime.now(dt.UTC))  # parses every field
    except (ParseException, ValueError) as exc:
        raise ConfigError(
            f"submit.schedule.cron {line!r} cannot be read ({exc}); write five fields: "
            "minute hour day-of-month month day-of-week, e.g. '*/10 * * * *'"
        ) from None
    return tab


def _cron_next(line: str, moment: float) -> float:
    """Return the first minute strictly after ``moment`` that matches the cron line (UTC).

    All five fields must match, as in Celery's ``crontab`` (classic cron ORs
    day-of-month and day-of-week when both are restricted).
    """
    tab = _crontab(line)
    probe = dt.datetime.fromtimestamp(moment, dt.UTC).replace(second=0, microsecond=0)
    probe += dt.timedelta(minutes=1)
    limit = probe + dt.timedelta(days=366 * 5)
    while probe < limit:
        if probe.month not in tab.month_of_year:
            year, month = divmod(probe.month, 12)
            probe = probe.replace(year=probe.year + year, month=month + 1, day=1, hour=0, minute=0)
        elif probe.day not in tab.day_of_month or (probe.weekday() + 1) % 7 not in tab.day_of_week:
            probe = (probe + dt.timedelta(days=1)).replace(hour=0, minute=0)
        elif probe.hour not in tab.hour:
            probe = (probe + dt.timedelta(hours=1)).replace(minute=0)
        elif probe.minute not in tab.minute:
            probe += dt.timedelta(minutes=1)
        else:
            return probe.timestamp()
    raise ConfigError(f"cron {line!r} never fires")
