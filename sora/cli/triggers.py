"""`sora triggers [NAME]` and `sora triggers fire NAME [INDEX] [--key K]`: a host's triggers
and firing one now, through `GET /api/functions/{name}/triggers` and
`POST /api/functions/{name}/triggers/{index}/fire` (sora.gateway.triggers_api).

Without NAME every function's triggers are listed (the function list needs an admin key; a key
for one function lists that one with NAME). `fire` without INDEX fires the function's one
schedule or file trigger, and asks for INDEX when it has several.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import time
from urllib.parse import quote

from ..config import FUNCTION_NAME_RE
from .host import ApiError, CliError, Host
from .output import ago, emit_json, shown, table, terminal_width

FIRE = "fire"
FIRABLE = ("schedule", "file")
HEADERS = ["FUNCTION", "#", "KIND", "SCHEDULE / PATH", "STATE", "NEXT", "LAST FIRING",
           "STATUS"]


# --- output ---------------------------------------------------------------------------------

def at_second(stamp) -> str | None:
    """A next fire time (ISO 8601 with its offset) to the second, for the table; a rate()
    counts from the moment it was first seen, fractions included."""
    try:
        return dt.datetime.fromisoformat(stamp).replace(microsecond=0).isoformat()
    except (TypeError, ValueError):
        return stamp


def what(entry: dict) -> str:
    """What a trigger runs on: its schedule (and timezone, when not UTC), the folder and pattern
    it watches, or its function URL."""
    kind = entry.get("kind")
    if kind == "schedule":
        zone = entry.get("timezone")
        return entry.get("expression", "?") + (f" {zone}" if zone and zone != "UTC" else "")
    if kind == "file":
        watching = entry.get("watching") or {}
        path = str(watching.get("path") or entry.get("path") or "?")
        pattern = watching.get("pattern") or "*"
        middle = "/**/" if watching.get("recursive") else "/"
        return path.rstrip("/") + middle + pattern
    return entry.get("url") or "-"


def firing(entry: dict, now: float) -> str:
    """Its last firing: when, and what became of it (`3.1s ago`, `2m ago, skipped: overlap`)."""
    last = entry.get("lastFiring")
    if not isinstance(last, dict):
        return "-"
    text = ago(last.get("fired") or last.get("due"), now)
    outcome = last.get("outcome")
    if outcome and outcome != "enqueued":
        text += f", {outcome}" + (f": {last['reason']}" if last.get("reason") else "")
    return text


def state_of(entry: dict) -> str | None:
    """Its state, with a file trigger's files waiting to settle or to be enqueued (the
    function's queue at its cap): `active, 12 pending`."""
    state = entry.get("state")
    pending = entry.get("pending")
    if isinstance(pending, int) and pending > 0:
        return f"{state}, {pending} pending"
    return state


def rows_of(body: dict, now: float) -> list[list]:
    rows = []
    for entry in body.get("triggers", []):
        last = entry.get("lastFiring") if isinstance(entry.get("lastFiring"), dict) else {}
        upcoming = entry.get("next") or []
        rows.append([body.get("function"), entry.get("index"), entry.get("kind"),
                     shown(what(entry)), state_of(entry),
                     at_second(upcoming[0]) if upcoming else None, firing(entry, now),
                     last.get("status")])
    return rows


def details_of(body: dict) -> list[str]:
    """The reasons of the triggers not active (an error's detail: a folder gone, the inotify
    limit), printed under the table."""
    return [f"{body.get('function')}[{e.get('index')}]: {shown(str(e['detail']))}"
            for e in body.get("triggers", [])
            if e.get("detail") and e.get("state") not in ("active", "disabled")]


def render(bodies: list[dict], now: float, wrap_at: int | None) -> None:
    rows = [row for body in bodies for row in rows_of(body, now)]
    if not rows:
        print("no triggers")
    else:
        table(rows, HEADERS, wrap_at=wrap_at)
    details = [line for body in bodies for line in details_of(body)]
    for line in details:
        print(line)
    if any(body.get("service") == "down" for body in bodies):
        print("sora: the trigger service did not answer: nothing fires until it is back; the "
              "next times shown are computed from the config", file=sys.stderr)


# --- commands -------------------------------------------------------------------------------

def function_names(host: Host) -> list[str]:
    """The host's functions (not a published version's NAME:N, nor a duplicate folder's
    `NAME (folder)`, which have no triggers of their own)."""
    try:
        functions = host.get_json("/api/functions").get("functions", [])
    except ApiError as exc:
        if exc.status != 403:
            raise
        raise CliError(f"{exc}; listing every function's triggers needs an admin key: give "
                       "a function's NAME (sora triggers NAME) to see its own") from None
    return [f["name"] for f in functions if FUNCTION_NAME_RE.match(str(f.get("name", "")))]


def cmd_triggers(args) -> int:
    words = args.words
    if words and words[0] == FIRE:
        return cmd_fire(args, words[1:])
    if args.key is not None:
        raise CliError("triggers: --key belongs to `sora triggers fire NAME INDEX --key K`", 2)
    if len(words) > 1:
        raise CliError(f"triggers: expected at most one function NAME, or `fire NAME [INDEX]`; "
                       f"got {' '.join(words)}", 2)
    host = Host.from_args(args)
    if words:
        bodies = [host.get_json(f"/api/functions/{quote(words[0], safe='')}/triggers")]
    else:
        bodies = []
        for name in function_names(host):
            try:
                bodies.append(host.get_json(f"/api/functions/{quote(name, safe='')}/triggers"))
            except ApiError as exc:
                if exc.status != 404:   # removed since it was listed
                    raise
    if args.json:
        emit_json(bodies[0] if words else {"functions": bodies})
        return 0
    render(bodies, time.time(), terminal_width())
    return 0


def chosen_index(host: Host, name: str) -> int:
    """The index of the function's one schedule or file trigger; CliError when it has none or
    several."""
    entries = host.get_json(f"/api/functions/{quote(name, safe='')}/triggers").get("triggers", [])
    firable = [e for e in entries if e.get("kind") in FIRABLE]
    if len(firable) == 1:
        return firable[0]["index"]
    if not firable:
        raise CliError(f"triggers fire: {name} has no schedule or file trigger", 2)
    listed = ", ".join(f"{e['index']} ({e['kind']} {what(e)})" for e in firable)
    raise CliError(f"triggers fire: {name} has {len(firable)} triggers; expected INDEX, one of "
                   f"{shown(listed)}", 2)


def cmd_fire(args, rest: list[str]) -> int:
    if not rest or len(rest) > 2:
        raise CliError("triggers fire: expected NAME [INDEX] [--key K]", 2)
    name = rest[0]
    host = Host.from_args(args)
    if len(rest) == 2:
        try:
            index = int(rest[1])
        except ValueError:
            raise CliError(f"triggers fire: INDEX: expected the trigger's position in the "
                           f"function's `trigger` list (sora triggers {name}), got "
                           f"{rest[1]!r}", 2) from None
    else:
        index = chosen_index(host, name)
    body = None if args.key is None else {"key": args.key}
    answer = host.call("POST", f"/api/functions/{quote(name, safe='')}/triggers/{index}/fire",
                       json.dumps(body).encode() if body else None,
                       {"Content-Type": "application/json"}).json()
    ids = answer.get("requestIds", [])
    if args.json:
        emit_json({"function": name, "index": index, **answer})
        return 0
    if not ids:
        print(f"{name}[{index}]: nothing to fire (no file new or changed since it was last "
              "seen)")
    for request_id in ids:
        print(f"queued {request_id}  ({name}[{index}])")
    return 0


def add_commands(command) -> None:
    """`sora triggers`, with `command(name, func, text)` from main.parser()."""
    cmd = command("triggers", cmd_triggers,
                  "list triggers (each schedule's next fire time, what each file trigger "
                  "watches, the last firing and its run's status); `triggers fire NAME "
                  "[INDEX] [--key K]` enqueues a firing now")
    cmd.add_argument("words", nargs="*", metavar="NAME | fire NAME [INDEX]")
    cmd.add_argument("--key", help="fire: the file to fire a file trigger for, as a path "
                     "inside the watched folder (default: rescan the folder and fire for "
                     "what is new or changed)")
