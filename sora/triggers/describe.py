"""A function's triggers as plain data: what `sora validate` prints, and what the API can show
when the trigger service does not answer (each schedule's next fire times computed here)."""
from __future__ import annotations

import math

from ..config import FileTrigger, FunctionConfig, ScheduleTrigger, Trigger
from . import schedule

NEXT_TIMES = 3


def next_fire_times(trigger: ScheduleTrigger, now: float, n: int = NEXT_TIMES,
                    anchor: float | None = None) -> list[str]:
    """The next `n` fire times after `now`, ISO 8601 with the offset, in the schedule's time
    zone. A rate() counts from `anchor` (the trigger service's persisted one), else from now
    (its whole second, as a fresh schedule would start)."""
    parsed = schedule.parse(trigger.expression, trigger.timezone,
                            anchor=math.floor(now) if anchor is None else anchor)
    return [schedule.iso(t, trigger.timezone) for t in parsed.next_times(now, n)]


def describe(trigger: Trigger, now: float) -> dict:
    """One trigger: its kind, index, whether enabled, and what it fires on."""
    out: dict = {"index": trigger.index, "kind": trigger.kind,
                 "enabled": getattr(trigger, "enabled", True)}
    if isinstance(trigger, ScheduleTrigger):
        out.update(expression=trigger.expression, timezone=trigger.timezone,
                   overlap=trigger.overlap, missed=trigger.missed,
                   input=trigger.input is not None,
                   next=next_fire_times(trigger, now) if trigger.enabled else [])
    elif isinstance(trigger, FileTrigger):
        out["watching"] = {"path": trigger.path, "pattern": trigger.pattern,
                           "recursive": trigger.recursive, "events": list(trigger.events),
                           "bucket": trigger.bucket_name, "writable": trigger.writable}
    return out


def describe_all(fn: FunctionConfig, now: float) -> list[dict]:
    return [describe(t, now) for t in fn.trigger]


def line(entry: dict) -> str:
    """One trigger on one line, for the terminal."""
    head = f"trigger[{entry['index']}] {entry['kind']}"
    if not entry["enabled"]:
        head += " (disabled)"
    if entry["kind"] == "http":
        return f"{head}: its function URL"
    if entry["kind"] == "schedule":
        when = ", ".join(entry["next"]) if entry["next"] else "none (no time ahead)"
        return f"{head} {entry['expression']} ({entry['timezone']}): next {when}"
    watching = entry["watching"]
    options = [watching["pattern"] or "*", "/".join(watching["events"])]
    if watching["recursive"]:
        options.append("recursive")
    if watching["writable"]:
        options.append("writable")
    return f"{head} {watching['path']} ({', '.join(options)}; bucket {watching['bucket']})"
