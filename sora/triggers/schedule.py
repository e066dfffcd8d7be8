"""Schedule expressions: when a `schedule` trigger fires.

Four forms, as `sora.yaml`'s `trigger[N].schedule` takes them:

- `rate(N unit)`: EventBridge's rate, every N minutes/hours/days (singular only with 1, as
  EventBridge); `second(s)` is Sora's extension for development. Fire times are
  anchor + k x period (k >= 1): the trigger service passes as anchor the time it first saw the
  schedule (persisted), so a restart keeps the rhythm.
- `cron(min hour day-of-month month day-of-week year)`: EventBridge's six fields: `?` in exactly
  one of the two day fields, `L`, `W`, `LW`, `#`, names (JAN, MON), day-of-week 1-7 = SUN-SAT,
  the year field (1970-2199).
- `at(yyyy-mm-ddThh:mm:ss)`: one time.
- a plain 5-field Unix cron line (`*/5 * * * *`), with cron's own rules (0 or 7 = Sunday; a
  restricted day-of-month and day-of-week match either).

Cron lines are matched by cronsim (a maintained library: L, LW, `#` and names), run on the
schedule's local wall-clock time (naive datetimes, so cronsim applies none of Debian cron's
daylight-saving quirks), and every local time it yields is then placed on the time line by us:
a local time that does not exist (the hour skipped in spring) is skipped, a local time that
exists twice (the hour repeated in autumn) runs once, at its first occurrence. What cronsim
does not have is applied here on its output: the year field and `nW` (nearest weekday).

All times in and out are epoch seconds (float); nothing here reads the clock except `parse`
for a rate() without an anchor, so tests drive it with any instant.
"""
from __future__ import annotations

import calendar
import math
import re
import time
from datetime import date, datetime, timedelta, timezone
from typing import Callable, Iterator, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = timezone.utc
# EventBridge's range for the year field.
YEARS = range(1970, 2200)
# A daylight-saving shift is at most an hour (two, to be safe: Troll station moves by two).
DST_MARGIN = timedelta(hours=2)
# cronsim stops after 50 years without a match; so does a search here.
HORIZON_YEARS = 50

RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE_RE = re.compile(r"^rate\(\s*(\d+)\s+([a-z]+)\s*\)$")
CRON_RE = re.compile(r"^cron\((.*)\)$")
AT_RE = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
DOW_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
EXPECTED_FORMS = ("rate(N minutes|hours|days|seconds), cron(min hour day-of-month month "
                  "day-of-week year), at(yyyy-mm-ddThh:mm:ss) or a 5-field cron line "
                  "(min hour day-of-month month day-of-week)")


class Schedule(Protocol):
    expression: str
    timezone: str

    def next_after(self, after: float) -> float | None:
        """Epoch seconds of the first fire time > after; None: never again."""

    def next_times(self, after: float, n: int = 3) -> list[float]:
        """The next `n` fire times after `after` (fewer if the schedule ends)."""

    def latest_between(self, after: float, until: float) -> float | None:
        """The most recent fire time in (after, until], or None."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError("expected ..., got ...") if unknown."""
    try:
        if not isinstance(name, str) or not name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"expected an IANA time zone name such as 'UTC' or 'Europe/Paris', "
                         f"got {name!r}") from None


def parse(expression: str, timezone: str = "UTC", *, anchor: float | None = None) -> Schedule:
    """The schedule of `expression` in `timezone`; raises ValueError("expected ..., got ...")."""
    tz = zone(timezone)
    if not isinstance(expression, str) or not expression.strip():
        raise ValueError(f"expected {EXPECTED_FORMS}, got {expression!r}")
    text = expression.strip()
    if text.startswith("rate("):
        return RateSchedule(expression, timezone, _rate_period(text),
                            time.time() if anchor is None else anchor)
    if text.startswith("at("):
        return AtSchedule(expression, timezone, _at_time(text, tz))
    if text.startswith("cron("):
        match = CRON_RE.match(text)
        fields = match.group(1).split() if match else []
        if len(fields) != 6:
            raise ValueError(f"expected cron(min hour day-of-month month day-of-week year) "
                             f"with 6 fields, got {expression!r}")
        return _eventbridge_cron(expression, timezone, tz, fields)
    fields = text.split()
    if len(fields) == 5:
        _check_cronsim(" ".join(fields), expression)
        return CronSchedule(expression, timezone, tz, " ".join(fields))
    raise ValueError(f"expected {EXPECTED_FORMS}, got {expression!r}")


# --- rate() ---------------------------------------------------------------------------------

def _rate_period(text: str) -> float:
    match = RATE_RE.match(text)
    if not match:
        raise ValueError(f"expected rate(N unit) with a whole number N and a unit of "
                         f"minute(s), hour(s), day(s) or second(s), got {text!r}")
    count, unit = int(match.group(1)), match.group(2)
    singular = unit[:-1] if unit.endswith("s") else unit
    if singular not in RATE_UNITS:
        raise ValueError(f"expected a unit of minute(s), hour(s), day(s) or second(s), got "
                         f"{text!r}")
    if count < 1:
        raise ValueError(f"expected a rate of at least 1, got {text!r}")
    # EventBridge's own rule: `1 minute`, `5 minutes`; neither `1 minutes` nor `5 minute`.
    if (count == 1) != (unit == singular):
        form = f"rate(1 {singular})" if count == 1 else f"rate({count} {singular}s)"
        raise ValueError(f"expected {form} (singular unit only with 1), got {text!r}")
    return float(count * RATE_UNITS[singular])


class RateSchedule:
    """Every `period` seconds from `anchor` (the first firing is anchor + period)."""

    def __init__(self, expression: str, timezone: str, period: float, anchor: float):
        self.expression, self.timezone = expression, timezone
        self.period, self.anchor = period, anchor

    def next_after(self, after: float) -> float | None:
        k = max(1, math.floor((after - self.anchor) / self.period) + 1)
        due = self.anchor + k * self.period
        return due if due > after else self.anchor + (k + 1) * self.period

    def next_times(self, after: float, n: int = 3) -> list[float]:
        return _next_times(self, after, n)

    def latest_between(self, after: float, until: float) -> float | None:
        k = math.floor((until - self.anchor) / self.period)
        if k < 1:
            return None
        due = self.anchor + k * self.period
        return due if after < due <= until else None


# --- at() -----------------------------------------------------------------------------------

def _at_time(text: str, tz: ZoneInfo) -> float:
    match = AT_RE.match(text)
    try:
        local = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S") if match else None
    except ValueError:
        local = None
    if local is None:
        raise ValueError(f"expected at(yyyy-mm-ddThh:mm:ss), a date and time that exist, got "
                         f"{text!r}")
    when = _place(local, tz)
    if when is None:
        raise ValueError(f"expected a local time that exists in {tz.key} (it is skipped by "
                         f"the daylight-saving change), got {text!r}")
    return when


class AtSchedule:
    """One time; none after it."""

    def __init__(self, expression: str, timezone: str, when: float):
        self.expression, self.timezone, self.when = expression, timezone, when

    def next_after(self, after: float) -> float | None:
        return self.when if self.when > after else None

    def next_times(self, after: float, n: int = 3) -> list[float]:
        return _next_times(self, after, n)

    def latest_between(self, after: float, until: float) -> float | None:
        return self.when if after < self.when <= until else None


# --- cron -----------------------------------------------------------------------------------

def _check_cronsim(line: str, expression: str) -> None:
    try:
        CronSim(line, datetime(2000, 1, 1))
    except (CronSimError, ValueError, IndexError) as exc:
        raise ValueError(f"expected a valid cron line, got {expression!r} ({exc})") from None


def _eventbridge_cron(expression: str, timezone: str, tz: ZoneInfo,
                      fields: list[str]) -> CronSchedule:
    """EventBridge's 6 fields, translated to a 5-field line for cronsim plus the filters
    cronsim has no syntax for (the year, `nW`)."""
    minute, hour, dom, month, dow, year = (f.upper() for f in fields)
    if (dom == "?") == (dow == "?"):
        raise ValueError(f"expected '?' in exactly one of day-of-month and day-of-week (the "
                         f"other restricts the day), got {expression!r}")
    if "?" in minute + hour + month + year or ("?" in dom and dom != "?") or \
            ("?" in dow and dow != "?"):
        raise ValueError(f"expected '?' only as a whole day-of-month or day-of-week field, "
                         f"got {expression!r}")
    day_filter = None
    nearest = re.match(r"^(\d{1,2})W$", dom)
    if nearest:
        day = int(nearest.group(1))
        if not 1 <= day <= 31:
            raise ValueError(f"expected nW with n from 1 to 31, got {expression!r}")
        day_filter = _nearest_weekday_filter(day)
        dom = "*"
    elif "W" in dom.replace("LW", ""):
        raise ValueError(f"expected W only as nW (the weekday nearest day n) or LW, got "
                         f"{expression!r}")
    line = " ".join([minute, hour, "*" if dom == "?" else dom, month,
                     "*" if dow == "?" else _eventbridge_dow(dow, expression)])
    years = _years(year, expression)
    _check_cronsim(line, expression)
    return CronSchedule(expression, timezone, tz, line, years=years, day_filter=day_filter)


def _eventbridge_dow(field: str, expression: str) -> str:
    """EventBridge's day-of-week (1-7 = SUN-SAT, `L` = SAT, `nL` = the month's last day n,
    `n#k`) in cronsim's numbering (0-6 = SUN-SAT)."""
    def number(text: str) -> str:
        if text in DOW_NAMES:
            return text
        if not text.isdigit() or not 1 <= int(text) <= 7:
            raise ValueError(f"expected day-of-week values 1-7 (SUN-SAT) or SUN..SAT, got "
                             f"{expression!r}")
        return str(int(text) - 1)

    out = []
    for term in field.split(","):
        if term == "L":
            out.append("6")
        elif term.endswith("L"):
            out.append(number(term[:-1]) + "L")
        elif "#" in term:
            day, _, nth = term.partition("#")
            out.append(number(day) + "#" + nth)
        else:
            span, slash, step = term.partition("/")
            if span == "*":
                span = "0-6" if slash else "*"
            elif "-" in span:
                lo, _, hi = span.partition("-")
                span = number(lo) + "-" + number(hi)
            else:
                span = number(span) + ("-6" if slash else "")
            out.append(span + slash + step)
    return ",".join(out)


def _years(field: str, expression: str) -> frozenset[int] | None:
    """The year field (`*`, 2027, 2026-2028, 2026/2, lists of these); None: every year."""
    if field == "*":
        return None
    years: set[int] = set()
    try:
        for term in field.split(","):
            span, slash, step = term.partition("/")
            if span == "*":
                lo, hi = YEARS.start, YEARS.stop - 1
            elif "-" in span:
                lo, hi = (int(v) for v in span.split("-", 1))
            else:
                lo = int(span)
                hi = YEARS.stop - 1 if slash else lo
            stride = int(step) if slash else 1
            if lo not in YEARS or hi not in YEARS or hi < lo or stride < 1:
                raise ValueError
            years.update(range(lo, hi + 1, stride))
    except ValueError:
        raise ValueError(f"expected a year field of *, years from {YEARS.start} to "
                         f"{YEARS.stop - 1}, ranges (2026-2028), steps (2026/2) or lists, got "
                         f"{expression!r}") from None
    return frozenset(years)


def _nearest_weekday_filter(day: int) -> Callable[[date], bool]:
    """`nW`: the weekday (MON-FRI) nearest day n of the month, within the month (Quartz's and
    EventBridge's rule: 1W on a Saturday is Monday the 3rd; a day past the month's end is the
    month's last day)."""
    def matches(d: date) -> bool:
        last = calendar.monthrange(d.year, d.month)[1]
        target = date(d.year, d.month, min(day, last))
        if target.weekday() == 5:    # Saturday: Friday before, or Monday after on the 1st
            target += timedelta(days=-1 if target.day > 1 else 2)
        elif target.weekday() == 6:  # Sunday: Monday after, or Friday before on the last day
            target += timedelta(days=1 if target.day < last else -2)
        return d == target
    return matches


class CronSchedule:
    """A cron line (5 fields for cronsim) on the local wall clock of `tz`."""

    def __init__(self, expression: str, timezone: str, tz: ZoneInfo, line: str, *,
                 years: frozenset[int] | None = None,
                 day_filter: Callable[[date], bool] | None = None):
        self.expression, self.timezone, self.tz, self.line = expression, timezone, tz, line
        self.years, self.day_filter = years, day_filter

    def next_after(self, after: float) -> float | None:
        # Start from the wall-clock time of `after`; in a repeated hour's second pass, the
        # local times ahead map (first occurrence) to instants before `after`: skipped below.
        start = datetime.fromtimestamp(after, self.tz).replace(tzinfo=None, fold=0)
        for local in self._local_times(start, forward=True):
            when = _place(local, self.tz)
            if when is not None and when > after:
                return when
        return None

    def next_times(self, after: float, n: int = 3) -> list[float]:
        return _next_times(self, after, n)

    def latest_between(self, after: float, until: float) -> float | None:
        # From a little past the wall-clock time of `until`, backwards: local times just
        # after it may still be at or before `until` on the time line (repeated hour).
        start = datetime.fromtimestamp(until, self.tz).replace(tzinfo=None) + DST_MARGIN
        for local in self._local_times(start, forward=False):
            when = _place(local, self.tz)
            if when is None or when > until:
                continue
            return when if when > after else None
        return None

    def _local_times(self, start: datetime, forward: bool) -> Iterator[datetime]:
        """Local (naive) times matching the line, the year and the day filter, strictly after
        (or before) `start`, within HORIZON_YEARS (or up to the year field's last year)."""
        if self.years is not None:
            limit = max(self.years) if forward else min(self.years)
        else:
            limit = start.year + (HORIZON_YEARS if forward else -HORIZON_YEARS)
        cursor = start
        while True:
            # CronSim skips past `start` itself; restarts below begin one second short.
            sim = CronSim(self.line, cursor, reverse=not forward)
            try:
                for local in sim:
                    if (forward and local.year > limit) or (not forward and local.year < limit):
                        return
                    if self.years is not None and local.year not in self.years:
                        cursor = self._other_year(local.year, forward)
                        break
                    if self.day_filter is not None and not self.day_filter(local.date()):
                        day = datetime.combine(local.date(), datetime.min.time())
                        cursor = day + timedelta(days=1, seconds=-1) if forward else day
                        break
                    yield local
                else:
                    return
            except StopIteration:   # cronsim: no match within its 50 years
                return
            if cursor is None:
                return

    def _other_year(self, year: int, forward: bool) -> datetime | None:
        """Where to restart when `year` is not in the year field: one second before the next
        allowed year begins (forward), or the first second of the previous year's end."""
        allowed = sorted(y for y in self.years if (y > year if forward else y < year))
        if not allowed:
            return None
        if forward:
            return datetime(allowed[0], 1, 1) - timedelta(seconds=1)
        return datetime(allowed[-1] + 1, 1, 1)


# --- shared ---------------------------------------------------------------------------------

def _place(local: datetime, tz: ZoneInfo) -> float | None:
    """Epoch seconds of the local time `local` in `tz`: its first occurrence when the clock
    repeats it; None when it does not exist (skipped by a daylight-saving change)."""
    aware = local.replace(tzinfo=tz, fold=0)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != local:
        return None
    return aware.timestamp()


def _next_times(schedule: Schedule, after: float, n: int) -> list[float]:
    out: list[float] = []
    while len(out) < n:
        due = schedule.next_after(after)
        if due is None:
            break
        out.append(due)
        after = due
    return out


def iso(when: float, timezone: str = "UTC") -> str:
    """ISO 8601 with the offset, in `timezone` (what `sora validate` prints)."""
    return datetime.fromtimestamp(when, zone(timezone)).isoformat()
