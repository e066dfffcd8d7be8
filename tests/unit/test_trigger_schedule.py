"""sora.triggers.schedule: every expression form on a controllable clock (epoch inputs, no
sleeping), including Europe/Paris's daylight-saving days."""
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from sora.triggers import schedule

PARIS = ZoneInfo("Europe/Paris")
UTC = ZoneInfo("UTC")


def at(*args, tz=UTC, fold=0) -> float:
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()


def local(times, tz=UTC) -> list[str]:
    return [datetime.fromtimestamp(t, tz).isoformat() for t in times]


# --- rate() ---------------------------------------------------------------------------------

def test_rate_counts_from_its_anchor():
    rate = schedule.parse("rate(5 minutes)", anchor=1000.0)
    assert rate.next_times(1000.0) == [1300.0, 1600.0, 1900.0]
    assert rate.next_after(0.0) == 1300.0          # never before anchor + one period
    assert rate.next_after(1300.0) == 1600.0       # strictly after
    assert rate.next_after(1299.5) == 1300.0
    assert rate.latest_between(0.0, 2000.0) == 1900.0
    assert rate.latest_between(1900.0, 2000.0) is None
    assert rate.latest_between(0.0, 1200.0) is None


@pytest.mark.parametrize("expression, period", [
    ("rate(1 minute)", 60), ("rate(10 minutes)", 600), ("rate(1 hour)", 3600),
    ("rate(2 hours)", 7200), ("rate(1 day)", 86400), ("rate(3 days)", 3 * 86400),
    ("rate(1 second)", 1), ("rate(10 seconds)", 10), ("rate( 2  seconds )", 2)])
def test_rate_units(expression, period):
    assert schedule.parse(expression, anchor=0.0).next_after(0.0) == period


@pytest.mark.parametrize("expression, expected", [
    ("rate(5 minute)", r"expected rate\(5 minutes\)"),
    ("rate(1 minutes)", r"expected rate\(1 minute\)"),
    ("rate(0 minutes)", "expected a rate of at least 1"),
    ("rate(5 weeks)", "expected a unit of minute"),
    ("rate(five minutes)", r"expected rate\(N unit\)"),
    ("rate(1.5 hours)", r"expected rate\(N unit\)")])
def test_rate_errors(expression, expected):
    with pytest.raises(ValueError, match=expected) as info:
        schedule.parse(expression)
    assert "got " in str(info.value)


# --- 5-field cron ---------------------------------------------------------------------------

def test_plain_cron_line():
    cron = schedule.parse("*/15 9-17 * * 1-5")      # weekdays, cron's 1-5 = MON-FRI
    start = at(2026, 12, 4, 17, 50)                 # a Friday
    assert local(cron.next_times(start, 3)) == [
        "2026-12-07T09:00:00+00:00", "2026-12-07T09:15:00+00:00", "2026-12-07T09:30:00+00:00"]
    assert cron.latest_between(at(2026, 12, 4), start) == at(2026, 12, 4, 17, 45)


def test_plain_cron_line_in_a_time_zone():
    cron = schedule.parse("0 9 * * *", "Europe/Paris")
    assert local(cron.next_times(at(2026, 12, 6), 2), PARIS) == [
        "2026-12-06T09:00:00+01:00", "2026-12-07T09:00:00+01:00"]
    assert cron.next_after(at(2026, 12, 6)) == at(2026, 12, 6, 8)   # 09:00 Paris = 08:00 UTC


# --- daylight saving: Europe/Paris, 2026-03-29 02:00 -> 03:00 and 2026-10-25 03:00 -> 02:00 --

@pytest.mark.parametrize("expression", ["30 2 * * *", "cron(30 2 * * ? *)"])
def test_spring_forward_skips_the_time_that_does_not_exist(expression):
    cron = schedule.parse(expression, "Europe/Paris")
    assert local(cron.next_times(at(2026, 3, 28, 12, tz=PARIS), 2), PARIS) == [
        "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]   # no 29th


def test_spring_forward_keeps_the_times_around_the_gap():
    cron = schedule.parse("*/30 * * * *", "Europe/Paris")
    assert local(cron.next_times(at(2026, 3, 29, 1, 0, tz=PARIS), 3), PARIS) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:30:00+02:00"]


@pytest.mark.parametrize("expression", ["30 2 * * *", "cron(30 2 * * ? *)"])
def test_fall_back_runs_a_repeated_time_once(expression):
    cron = schedule.parse(expression, "Europe/Paris")
    assert local(cron.next_times(at(2026, 10, 24, 12, tz=PARIS), 3), PARIS) == [
        "2026-10-25T02:30:00+02:00",                # the first 02:30 only
        "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]


def test_fall_back_from_inside_the_repeated_hour():
    cron = schedule.parse("*/20 * * * *", "Europe/Paris")
    # 02:10 of the second pass (CET): its 02:20 and 02:40 ran in the first pass.
    second_pass = at(2026, 10, 25, 2, 10, tz=PARIS, fold=1)
    assert local(cron.next_times(second_pass, 2), PARIS) == [
        "2026-10-25T03:00:00+01:00", "2026-10-25T03:20:00+01:00"]
    first_pass = at(2026, 10, 25, 1, 50, tz=PARIS)
    assert local(cron.next_times(first_pass, 4), PARIS) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:20:00+02:00",
        "2026-10-25T02:40:00+02:00", "2026-10-25T03:00:00+01:00"]
    # The latest time up to the second pass's 02:50 is the first pass's 02:40.
    assert cron.latest_between(first_pass, at(2026, 10, 25, 2, 50, tz=PARIS, fold=1)) == \
        at(2026, 10, 25, 2, 40, tz=PARIS)


def test_latest_between_across_daylight_saving():
    cron = schedule.parse("30 2 * * *", "Europe/Paris")
    assert cron.latest_between(at(2026, 3, 28, tz=PARIS), at(2026, 3, 29, 23, tz=PARIS)) == \
        at(2026, 3, 28, 2, 30, tz=PARIS)
    assert cron.latest_between(at(2026, 3, 28, 3, tz=PARIS),
                               at(2026, 3, 29, 23, tz=PARIS)) is None


# --- EventBridge cron -----------------------------------------------------------------------

@pytest.mark.parametrize("expression, after, expected", [
    ("cron(0 12 * * ? *)", (2026, 12, 6, 13), ["2026-12-07T12:00:00+00:00",
                                               "2026-12-08T12:00:00+00:00"]),
    # day-of-week 1-7 = SUN-SAT: 2 is Monday, 6 Friday
    ("cron(0 8 ? * 2-6 *)", (2026, 12, 4, 9), ["2026-12-07T08:00:00+00:00",
                                               "2026-12-08T08:00:00+00:00"]),
    ("cron(0 8 ? * 1 *)", (2026, 12, 1), ["2026-12-06T08:00:00+00:00",
                                          "2026-12-13T08:00:00+00:00"]),
    ("cron(0 8 ? * 7 *)", (2026, 12, 1), ["2026-12-05T08:00:00+00:00",
                                          "2026-12-12T08:00:00+00:00"]),
    ("cron(0 8 ? * MON-FRI *)", (2026, 12, 4, 9), ["2026-12-07T08:00:00+00:00",
                                                   "2026-12-08T08:00:00+00:00"]),
    ("cron(0 0 1 JAN,JUL ? *)", (2026, 12, 1), ["2027-01-01T00:00:00+00:00",
                                                "2027-07-01T00:00:00+00:00"]),
    # L: the month's last day; 6L: its last Friday; LW: its last weekday
    ("cron(0 0 L * ? *)", (2027, 1, 31, 1), ["2027-02-28T00:00:00+00:00",
                                             "2027-03-31T00:00:00+00:00"]),
    ("cron(0 0 ? * 6L *)", (2026, 12, 1), ["2026-12-25T00:00:00+00:00",
                                           "2027-01-29T00:00:00+00:00"]),
    ("cron(0 0 LW * ? *)", (2027, 1, 1), ["2027-01-29T00:00:00+00:00",   # 31st a Sunday
                                          "2027-02-26T00:00:00+00:00"]),
    # L alone in day-of-week: the week's last day, Saturday
    ("cron(0 0 ? * L *)", (2026, 12, 1), ["2026-12-05T00:00:00+00:00",
                                          "2026-12-12T00:00:00+00:00"]),
    # #: the nth such day (2#1: the first Monday; 3#2: the second Tuesday)
    ("cron(0 9 ? * 2#1 *)", (2026, 12, 1), ["2026-12-07T09:00:00+00:00",
                                            "2027-01-04T09:00:00+00:00"]),
    ("cron(0 9 ? * 3#2 *)", (2026, 12, 1), ["2026-12-08T09:00:00+00:00",
                                            "2027-01-12T09:00:00+00:00"]),
    # W: the weekday nearest the day, in the month (15 Nov 2026 is a Sunday: Monday 16th;
    # 1 May 2027 a Saturday: Monday 3rd, not April 30th)
    ("cron(0 10 15W * ? *)", (2026, 11, 1), ["2026-11-16T10:00:00+00:00",
                                             "2026-12-15T10:00:00+00:00"]),
    ("cron(0 10 1W 5 ? *)", (2027, 1, 1), ["2027-05-03T10:00:00+00:00",
                                           "2028-05-01T10:00:00+00:00"]),
    # 31W in a 30-day month: its last day (30 Nov 2026, a Monday)
    ("cron(0 10 31W 11 ? *)", (2026, 1, 1), ["2026-11-30T10:00:00+00:00",
                                             "2027-11-30T10:00:00+00:00"]),
    # steps in day-of-week count from EventBridge's numbers: 2/2 = MON, WED, FRI
    ("cron(0 0 ? * 2/2 *)", (2026, 12, 6), ["2026-12-07T00:00:00+00:00",
                                            "2026-12-09T00:00:00+00:00",
                                            "2026-12-11T00:00:00+00:00",
                                            "2026-12-14T00:00:00+00:00"]),
    # the year field
    ("cron(0 12 1 1 ? 2028)", (2026, 12, 1), ["2028-01-01T12:00:00+00:00"]),
    ("cron(0 12 1 1 ? 2027-2028)", (2026, 12, 1), ["2027-01-01T12:00:00+00:00",
                                                   "2028-01-01T12:00:00+00:00"]),
    ("cron(0 12 1 1 ? 2027/2)", (2026, 12, 1), ["2027-01-01T12:00:00+00:00",
                                                "2029-01-01T12:00:00+00:00"]),
    ("cron(0 12 1 1 ? 2020)", (2026, 12, 1), []),
    ("cron(0 12 1 1 ? 2199)", (2026, 12, 1), ["2199-01-01T12:00:00+00:00"]),   # past 50 years
])
def test_eventbridge_cron(expression, after, expected):
    cron = schedule.parse(expression)
    assert local(cron.next_times(at(*after), max(len(expected), 1))) == expected


def test_eventbridge_cron_latest_with_a_year_and_nearest_weekday():
    cron = schedule.parse("cron(0 10 15W * ? 2026)")
    assert local([cron.latest_between(at(2026, 1, 1), at(2027, 6, 1))]) == [
        "2026-12-15T10:00:00+00:00"]
    assert cron.latest_between(at(2026, 12, 15, 11), at(2027, 6, 1)) is None


def test_eventbridge_cron_in_a_time_zone():
    cron = schedule.parse("cron(0 9 ? * MON *)", "Europe/Paris")
    assert local(cron.next_times(at(2026, 3, 27), 2), PARIS) == [
        "2026-03-30T09:00:00+02:00", "2026-04-06T09:00:00+02:00"]


@pytest.mark.parametrize("expression, expected", [
    ("cron(0 12 * * * *)", "'?' in exactly one of day-of-month and day-of-week"),
    ("cron(0 12 ? * ? *)", "'?' in exactly one of day-of-month and day-of-week"),
    ("cron(0 12 * * MON)", "6 fields"),
    ("cron(0 12 ? * 8 *)", "day-of-week values 1-7"),
    ("cron(0 12 ? * 0 *)", "day-of-week values 1-7"),
    ("cron(61 12 * * ? *)", "a valid cron line"),
    ("cron(0 12 ? 13 MON *)", "a valid cron line"),
    ("cron(0 12 * * ? 1969)", "a year field"),
    ("cron(0 12 * * ? 2200)", "a year field"),
    ("cron(0 12 W * ? *)", "W only as nW"),
    ("cron(? 12 ? * MON *)", "'?' only as a whole day"),
])
def test_eventbridge_cron_errors(expression, expected):
    with pytest.raises(ValueError, match="expected") as info:
        schedule.parse(expression)
    assert expected in str(info.value) and repr(expression) in str(info.value)


# --- at() -----------------------------------------------------------------------------------

def test_at_fires_once_in_its_time_zone():
    once = schedule.parse("at(2026-12-01T09:00:00)", "Europe/Paris")
    assert once.next_times(at(2026, 11, 1), 3) == [at(2026, 12, 1, 8)]
    assert once.next_after(at(2026, 12, 1, 8)) is None            # in the past: never again
    assert once.latest_between(at(2026, 11, 1), at(2027, 1, 1)) == at(2026, 12, 1, 8)
    assert once.latest_between(at(2026, 12, 1, 8), at(2027, 1, 1)) is None


def test_at_in_the_past_has_no_next_time():
    assert schedule.parse("at(2020-01-01T00:00:00)").next_times(at(2026, 1, 1)) == []


def test_at_a_repeated_time_is_its_first_occurrence():
    assert schedule.parse("at(2026-10-25T02:30:00)", "Europe/Paris").next_after(0) == \
        at(2026, 10, 25, 2, 30, tz=PARIS, fold=0)


@pytest.mark.parametrize("expression, expected", [
    ("at(2026-03-29T02:30:00)", "a local time that exists in Europe/Paris"),
    ("at(2026-02-30T09:00:00)", "a date and time that exist"),
    ("at(2026-12-01 09:00:00)", r"at\(yyyy-mm-ddThh:mm:ss\)"),
    ("at(2026-12-01T09:00)", r"at\(yyyy-mm-ddThh:mm:ss\)")])
def test_at_errors(expression, expected):
    with pytest.raises(ValueError, match=expected):
        schedule.parse(expression, "Europe/Paris")


# --- errors shared by every form ------------------------------------------------------------

@pytest.mark.parametrize("expression", ["", "every day", "* * * *", "* * * * * * *", 5])
def test_unknown_forms(expression):
    with pytest.raises(ValueError, match=r"^expected rate\(N .* got "):
        schedule.parse(expression)


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "europe/paris"])
def test_unknown_time_zone(name):
    with pytest.raises(ValueError, match="expected an IANA time zone name"):
        schedule.parse("rate(1 minute)", name)


def test_iso_prints_the_offset_of_the_time_zone():
    assert schedule.iso(at(2026, 7, 1, 10), "Europe/Paris") == "2026-07-01T12:00:00+02:00"
    assert schedule.iso(at(2026, 7, 1, 10)) == "2026-07-01T10:00:00+00:00"
