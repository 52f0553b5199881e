"""When ticks are due: fixed periods on a global grid, or 5-field cron expressions (UTC).

Tick times are absolute: a period schedule's ticks fall on multiples of the period since the Unix
epoch (plus an offset), so every process, every restart and every re-seeded token agrees on the
grid without shared state, and processing time can never shift it (no drift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# Cron fields: (name, lowest, highest).
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)  # 0 and 7: Sunday
# The longest cron search: a valid expression such as "0 0 29 2 *" fires within 8 years.
_MAX_CRON_DAYS = 366 * 8


class ScheduleError(ValueError):
    """A period or cron expression that cannot be scheduled; the message says why."""


@dataclass(frozen=True)
class Every:
    """Every `period_s` seconds, ticks at `offset_s + k * period_s` (epoch seconds)."""

    period_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ScheduleError(f"period must be a positive number of seconds, got {self.period_s}")
        if not 0 <= self.offset_s < self.period_s:
            raise ScheduleError(f"offset must be in [0, period), got {self.offset_s}")

    @property
    def nominal_period_s(self) -> float:
        return self.period_s

    def _index(self, t: float) -> int:
        return math.floor((t - self.offset_s) / self.period_s + 1e-9)

    def at(self, k: int) -> float:
        return self.offset_s + k * self.period_s

    def first_after(self, t: float) -> float:
        """The first tick strictly after `t`."""
        return self.at(self._index(t) + 1)

    def last_at_or_before(self, t: float) -> float:
        return self.at(self._index(t))

    def cron_expression(self) -> str:
        """The closest cron.yaml schedule (minute granularity; sub-minute periods run each minute)."""
        p = self.period_s
        if self.offset_s:
            raise ScheduleError("an offset period has no cron equivalent; use a Cron schedule")
        if p <= 60:
            return "* * * * *"
        minutes = p / 60
        if minutes < 60 and minutes == int(minutes) and 60 % int(minutes) == 0:
            return f"*/{int(minutes)} * * * *"
        hours = p / 3600
        if hours < 24 and hours == int(hours) and 24 % int(hours) == 0:
            return "0 * * * *" if hours == 1 else f"0 */{int(hours)} * * *"
        if p == 86_400:
            return "0 0 * * *"
        raise ScheduleError(
            f"a period of {p} s has no cron equivalent (use a divisor of an hour or a day, "
            "or a Cron schedule)"
        )


def _parse_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise ScheduleError(f"cron {name}: bad step {step_text!r}")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise ScheduleError(f"cron {name}: bad range {part!r}")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = int(part)
            end = hi if step > 1 else start
        else:
            raise ScheduleError(f"cron {name}: bad value {part!r}")
        if not lo <= start <= end <= hi:
            raise ScheduleError(f"cron {name}: {part!r} outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(v % 7 if name == "weekday" else v for v in values)


@dataclass(frozen=True)
class Cron:
    """A 5-field cron expression in UTC (minute hour day-of-month month day-of-week)."""

    expression: str
    _fields: tuple[frozenset[int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = self.expression.split()
        if len(parts) != 5:
            raise ScheduleError(f"cron needs 5 fields, got {self.expression!r}")
        parsed = tuple(
            _parse_field(text, name, lo, hi)
            for text, (name, lo, hi) in zip(parts, _FIELDS, strict=True)
        )
        object.__setattr__(self, "_fields", parsed)
        self.first_after(0.0)  # an impossible date (e.g. 31 February) fails here, not at run time

    @property
    def nominal_period_s(self) -> float:
        """The shortest gap between two fires (the reconciler's and alarms' time scale)."""
        t = self.first_after(datetime.now(UTC).timestamp())
        gaps = []
        for _ in range(8):
            nxt = self.first_after(t)
            gaps.append(nxt - t)
            t = nxt
        return min(gaps)

    def _matches_day(self, d: datetime) -> bool:
        _, _, days, months, weekdays = self._fields
        if d.month not in months:
            return False
        # Standard cron: when both day fields are restricted, either may match.
        day_star = self.expression.split()[2] == "*"
        dow_star = self.expression.split()[4] == "*"
        dom = d.day in days
        dow = (d.isoweekday() % 7) in weekdays
        if day_star or dow_star:
            return dom and dow
        return dom or dow

    def first_after(self, t: float) -> float:
        minutes, hours = self._fields[0], self._fields[1]
        start = datetime.fromtimestamp(t, UTC).replace(second=0, microsecond=0) + timedelta(
            minutes=1
        )
        day = start.replace(hour=0, minute=0)
        for _ in range(_MAX_CRON_DAYS):
            if self._matches_day(day):
                for h in sorted(hours):
                    for m in sorted(minutes):
                        candidate = day.replace(hour=h, minute=m)
                        if candidate >= start:
                            return candidate.timestamp()
            day += timedelta(days=1)
        raise ScheduleError(f"cron {self.expression!r} never fires")

    def last_at_or_before(self, t: float) -> float:
        # Walk back a day at a time until a fire at or before t is found.
        probe = t - 86_400
        for _ in range(_MAX_CRON_DAYS):
            fire = self.first_after(probe)
            if fire <= t:
                while True:
                    nxt = self.first_after(fire)
                    if nxt > t:
                        return fire
                    fire = nxt
            probe -= 86_400
        raise ScheduleError(f"cron {self.expression!r} never fires")

    def cron_expression(self) -> str:
        return " ".join(self.expression.split())


Schedule = Every | Cron


def next_due(schedule: Schedule, previous_due: float, now: float) -> tuple[float, int]:
    """The tick to run after `previous_due`, and how many ticks were missed on the way.

    If processing overran one or more ticks, the latest tick that is already due runs at once (it
    is reported late) and the ones before it are reported missed: the grid never moves, runs
    never overlap, and an overrunning task neither piles up work nor waits idle.
    """
    following = schedule.first_after(previous_due)
    if following > now:
        return following, 0
    latest = schedule.last_at_or_before(now)
    missed = 0
    t = following
    while t < latest:
        missed += 1
        t = schedule.first_after(t)
    return latest, missed
