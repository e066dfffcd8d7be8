"""What a function's triggers look like from outside: the entries `GET
/api/functions/{name}/triggers`, `sora triggers` and `/healthz` show.

The trigger service (sora.triggers.service) answers `status` with one TRIGGER_STATUS per
schedule and file trigger (design18 §5). This module adds what only the gateway knows or needs:

- `http` triggers, which the service does not run, as entries of their own;
- each last firing's run status, looked up by its request id: `queued`, `leased` or `dead`
  while its event is in the queue (the host's store), then `ok`, `error`, `timeout` or
  `crashed` from its record;
- when the service does not answer: every trigger from the config, its next fire times computed
  here (a rate() from the anchor the service persisted), its last firing from the store, and
  state `down` (nothing fires while the service is down);
- the summary /healthz shows.
"""
from __future__ import annotations

from ..config import FunctionConfig
from ..store import queue, records
from ..store import triggers as trigger_store
from . import describe

DOWN_DETAIL = "the trigger service did not answer"
NOT_REPORTED = "not (yet) run by the trigger service: is a reload on its way?"
# The trigger service runs the triggers of its own host's functions (sora.triggers.service).
ELSEWHERE = ("the function is served by a joined host: this host's trigger service does not "
             "run its triggers")


def http_entry(fn: FunctionConfig, trigger) -> dict:
    """The function URL, which the gateways serve: always active, never fired by a schedule."""
    return {"index": trigger.index, "kind": "http", "enabled": True, "state": "active",
            "detail": None, "url": f"/functions/{fn.name}", "next": [], "lastFiring": None}


def _stored(queue_conn, function: str, key: str) -> tuple[dict | None, dict | None]:
    """The service's persisted state of one trigger (sora.store.triggers: its rate() anchor)
    and its last firing, as the service reports them; None for what it has not stored yet."""
    state = trigger_store.state(queue_conn, function, key)
    last = trigger_store.firings(queue_conn, function, key, 1)
    return state, ({k: last[0][k] for k in ("due", "fired", "requestId", "outcome", "reason")}
                   if last else None)


def next_times(trigger, anchor: float | None, now: float) -> list[str]:
    """The next fire times of an enabled schedule, computed here (sora.triggers.describe, as
    `sora validate` shows them)."""
    if not trigger.enabled:
        return []
    try:
        return describe.next_fire_times(trigger, now, anchor=anchor)
    except ValueError:   # checked at load; a config another host sent may still be odd
        return []


def watching(trigger) -> dict:
    """What a file trigger watches, as the service's status says it."""
    return {"path": trigger.path, "pattern": trigger.pattern, "recursive": trigger.recursive,
            "events": list(trigger.events)}


def configured(fn: FunctionConfig, queue_conn, now: float) -> list[dict]:
    """Every trigger of `fn` from its config alone, for when the service does not answer."""
    entries = []
    for trigger in fn.trigger:
        if trigger.kind == "http":
            entries.append(http_entry(fn, trigger))
            continue
        state, last = _stored(queue_conn, fn.name, trigger.key)
        entry = {"index": trigger.index, "kind": trigger.kind, "enabled": trigger.enabled,
                 "state": "down" if trigger.enabled else "disabled",
                 "detail": DOWN_DETAIL if trigger.enabled else None, "lastFiring": last}
        if trigger.kind == "schedule":
            entry.update(expression=trigger.expression, timezone=trigger.timezone,
                         next=next_times(trigger, (state or {}).get("first_seen"), now))
        else:
            entry.update(path=trigger.path, next=[], watching=watching(trigger))
        entries.append(entry)
    return entries


def merged(fn: FunctionConfig, reported: list[dict], queue_conn, now: float,
           why_missing: str = NOT_REPORTED) -> list[dict]:
    """The service's entries, in the order of the function's `trigger` list, with its http
    triggers (which the service does not run) and any trigger the service does not report
    (its config newer than the service's, a reload on its way) from the config."""
    entries = {e["index"]: e for e in reported if isinstance(e, dict) and "index" in e}
    for trigger in fn.files:
        entry = entries.get(trigger.index)
        if entry is not None and not entry.get("watching"):
            # A watcher that failed to start reports no `watching`; the config says it.
            entry["watching"] = watching(trigger)
    missing = [t.index for t in fn.trigger if t.index not in entries]
    if missing:
        for entry in configured(fn, queue_conn, now):
            if entry["index"] in missing:
                if entry["kind"] != "http" and entry["enabled"]:
                    entry.update(state="unknown", detail=why_missing)
                entries[entry["index"]] = entry
    return [entries[i] for i in sorted(entries)]


def run_status(queue_conn, records_conn, request_id: str | None) -> str | None:
    """The status of the run a firing enqueued: its event's state while it is in the queue
    (queued, leased, dead), then its record's (ok, error, timeout, crashed); None for no
    request id (a skipped firing) or a run neither place has (pruned, or its record still on
    its way to the recorder)."""
    if not request_id:
        return None
    event = queue.find_event(queue_conn, request_id)
    if event is not None:
        return event["state"]
    return records.status_of(records_conn, request_id)


def with_run_status(entries: list[dict], queue_conn, records_conn) -> list[dict]:
    for entry in entries:
        firing = entry.get("lastFiring")
        if isinstance(firing, dict):
            firing["status"] = run_status(queue_conn, records_conn, firing.get("requestId"))
    return entries


def health_summary(status: dict | None) -> dict:
    """What /healthz adds to the `triggers` process's entry: `scheduler` (its state and since,
    or `{"state": "down"}` when the service did not answer), how many schedules are in each
    state (`active`, `disabled`, `error`), and each watcher's state and detail."""
    if not isinstance(status, dict):
        return {"scheduler": {"state": "down"}, "schedules": {}, "watchers": []}
    scheduler = status.get("scheduler") or {}
    summary = {"scheduler": {"state": scheduler.get("state", "unknown"),
                             "since": scheduler.get("since")},
               "schedules": {}, "watchers": []}
    for function, entries in sorted((status.get("functions") or {}).items()):
        for entry in entries or ():
            if entry.get("kind") == "schedule":
                state = str(entry.get("state"))
                summary["schedules"][state] = summary["schedules"].get(state, 0) + 1
            elif entry.get("kind") == "file":
                summary["watchers"].append({
                    "function": function, "index": entry.get("index"),
                    "path": (entry.get("watching") or {}).get("path", entry.get("path")),
                    "state": entry.get("state"), "detail": entry.get("detail")})
    return summary
