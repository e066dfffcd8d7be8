"""The event queue: asynchronous invocations, from acceptance to acknowledgement.

An event is committed (SQLite: synchronous=FULL; PostgreSQL: a synchronous commit) before the
caller gets 202. The dispatcher leases events (state `leased`, an attempt counted, a lease
deadline and its owner) rather than deleting them on read; only a success acknowledges
(deletes) one. A failure puts it back `queued` with a later `due`, or, when its retries or its
age are used up, `dead`: the dead-letter list, kept with every attempt's error until replayed.
Leases that no dispatcher holds any more (it crashed, the host was killed) go back to
`queued`, so an accepted event runs at least once.

Both store backends (sora.store.backend) run the same functions; SQL is written once where
both dialects accept it. They differ where several processes on several hosts write one
PostgreSQL database (on SQLite, `BEGIN IMMEDIATE` takes the whole file's write lock):

- enqueue with caps locks the functions' `event_totals` rows (`SELECT ... FOR UPDATE`, made
  first with `INSERT ... ON CONFLICT DO NOTHING`, in name order so two batches never wait on
  each other in a circle), so gateways on several hosts cannot pass a cap together;
- lease is one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`: the
  dispatchers of several hosts take disjoint events without waiting on each other;
- a lease has an owner (`<host id>#<pid>`, sora.store.backend.host_id): acknowledging,
  requeueing or burying an event with an owner is done only while that owner's lease is the
  event's last, so a dispatcher whose lease ran out and was taken by another cannot settle the
  other's run; a dispatcher at start returns only its own host's leases.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .records import TRIGGER_KINDS, trigger_fields

EVENT_STATES = ("queued", "leased", "dead")


@dataclass(frozen=True)
class Event:
    id: int
    request_id: str
    function: str
    trigger: str
    payload: bytes
    accepted: float
    attempts: int      # including the attempt this lease is for
    owner: str | None = None     # the lease's owner, as given to lease()
    lease_until: float = 0.0     # epoch seconds: the lease runs out then


@dataclass(frozen=True)
class Attempt:
    """One failed attempt, as the dead-letter list shows it."""
    start: float
    duration_ms: float
    error_type: str
    error_message: str


def lease_owner(host_id: str, pid: int) -> str:
    """The owner a dispatcher writes on its leases: its host's id and its own process."""
    return f"{host_id}#{pid}"


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching the strings that start with `prefix` (escaped with backslashes)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _lock_totals(conn, functions) -> dict[str, list[int]]:
    """PostgreSQL, inside a transaction: lock the functions' totals rows (made if missing) in
    name order and return them; another transaction adding events for them waits."""
    totals = {}
    lock = "SELECT events, bytes FROM event_totals WHERE function = ? FOR UPDATE"
    for function in sorted(functions):
        row = conn.execute(lock, (function,)).fetchone()
        if row is None:   # the function's first event: its row, made once for all hosts
            conn.execute("INSERT INTO event_totals (function, events, bytes) VALUES (?, 0, 0) "
                         "ON CONFLICT (function) DO NOTHING", (function,))
            row = conn.execute(lock, (function,)).fetchone()
        totals[function] = [row[0], row[1]]
    return totals


def enqueue(conn, events: list[tuple[str, str, str, bytes, float]],
            caps: dict[str, tuple[int, int]] | None = None,
            lock_timeout_ms: int | None = None) -> list[bool]:
    """Store accepted events (request id, function, trigger, payload, time accepted) in one
    transaction; returns once they are durable, raises one of sora.store.backend.ERRORS if
    they are not.

    `caps` gives per function the most events and payload bytes it may have stored (in any
    state); an event that would pass either is not stored. Returns, per event, whether it was
    stored. The check and the insert are one transaction holding the function's totals (the
    file's write lock on SQLite, the totals row's lock on PostgreSQL), so gateways in other
    processes or on other hosts cannot pass a cap together. `lock_timeout_ms` (PostgreSQL;
    SQLite's connection has its busy timeout): the longest wait for a lock, after which the
    events are not stored (an error) rather than the caller kept waiting."""
    with conn.transaction():
        stored = [True] * len(events)
        functions = {e[1] for e in events}
        if conn.dialect == "postgresql":
            if lock_timeout_ms is not None:
                conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
            # Locked even without caps: the totals triggers then update rows already held, in
            # name order, never in the batch's order (two batches could wait on each other).
            totals = _lock_totals(conn, functions)
        elif caps:
            totals = {fn: list(stored_totals(conn, fn)) for fn in functions}
        if caps:
            for i, (_, function, _, payload, _) in enumerate(events):
                cap, total = caps.get(function), totals[function]
                if cap is not None and (total[0] >= cap[0] or total[1] + len(payload) > cap[1]):
                    stored[i] = False
                else:
                    total[0] += 1
                    total[1] += len(payload)
        rows = [(*event, event[4]) for event, ok in zip(events, stored) if ok]
        insert = ("INSERT INTO events (request_id, function, trigger, payload, accepted, "
                  "state, due) VALUES (?, ?, ?, ?, ?, 'queued', ?)")
        if len(rows) == 1:   # the usual commit when not under load: no executemany's setup
            conn.execute(insert, rows[0])
        elif rows:
            conn.executemany(insert, rows)
    return stored


def stored_totals(conn, function: str, lock: bool | None = None) -> tuple[int, int]:
    """How many events the function has stored (in any state), and their payloads' bytes.

    `lock` (by default: when called inside a transaction, which then adds events after
    checking a cap, e.g. a trigger's firing): on PostgreSQL the totals row stays locked until
    the transaction ends, so a cap checked with these figures holds cluster-wide (SQLite's
    transaction holds the whole file already)."""
    if lock is None:
        lock = conn.in_transaction
    if lock and conn.dialect == "postgresql":
        return tuple(_lock_totals(conn, [function])[function])
    row = conn.execute("SELECT events, bytes FROM event_totals WHERE function = ?",
                       (function,)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def release_leases(conn, now: float, expired_only: bool = True,
                   host_id: str | None = None) -> int:
    """Put leased events back in the queue: those whose lease ran out (any owner's), or (at a
    dispatcher's start, `expired_only=False`) also every lease of the host `host_id` (its
    dispatcher is starting, so none can still be held; with no `host_id`, every lease: a
    store only one host uses). The attempt stays counted; the owner is kept, so its
    dispatcher, if it is still running after all, can still settle the run it made."""
    sql = "UPDATE events SET state = 'queued', lease_until = NULL WHERE state = 'leased'"
    args: tuple = ()
    if expired_only:
        sql += " AND lease_until < ?"
        args = (now,)
    elif host_id is not None:
        # `<host id>#<pid>`: the pid holds no `#`, so an owner with one more `#` after the
        # prefix is another host's whose id starts with this one's and `#`.
        mine = _like_prefix(f"{host_id}#")
        sql += (" AND (lease_until < ? OR lease_owner IS NULL OR "
                "(lease_owner LIKE ? ESCAPE '\\' AND lease_owner NOT LIKE ? ESCAPE '\\'))")
        args = (now, mine, mine[:-1] + "%#%")
    with conn.transaction():
        return conn.execute(sql, args).rowcount


def lease(conn, function: str, limit: int, now: float, lease_seconds: float,
          owner: str | None = None) -> list[Event]:
    """Take up to `limit` due events of a function, the longest due first, count an attempt
    and write `owner` on the lease.

    SQLite: only the host's one dispatcher leases, so the due events are found before the
    write lock is taken: a look that finds none costs no lock (gateways commit new events
    meanwhile). PostgreSQL: one statement that skips the events other dispatchers are leasing
    at that moment (FOR UPDATE SKIP LOCKED), so none is leased twice and none waits.
    """
    until = now + lease_seconds
    if conn.dialect == "postgresql":
        with conn.transaction():
            # The picked ids are materialized once: as an `IN (subquery)` the planner may
            # run the subquery again per row, and with SKIP LOCKED each run picks more.
            rows = conn.execute(
                "WITH picked AS MATERIALIZED (SELECT id FROM events WHERE function = ? AND "
                "state = 'queued' AND due <= ? ORDER BY due LIMIT ? FOR UPDATE SKIP LOCKED) "
                "UPDATE events SET state = 'leased', attempts = attempts + 1, "
                "lease_until = ?, lease_owner = ? FROM picked WHERE events.id = picked.id "
                "RETURNING events.id, events.request_id, events.function, events.trigger, "
                "events.payload, events.accepted, events.attempts, events.due",
                (function, now, limit, until, owner)).fetchall()
        rows = sorted(rows, key=lambda row: (row["due"], row["id"]))
        return [Event(row["id"], row["request_id"], row["function"], row["trigger"],
                      bytes(row["payload"]), row["accepted"], row["attempts"], owner, until)
                for row in rows]
    rows = conn.execute(
        "SELECT id, request_id, function, trigger, payload, accepted, attempts FROM events "
        "WHERE function = ? AND state = 'queued' AND due <= ? ORDER BY due LIMIT ?",
        (function, now, limit)).fetchall()
    if not rows:
        return []
    with conn.transaction():
        conn.executemany("UPDATE events SET state = 'leased', attempts = attempts + 1, "
                         "lease_until = ?, lease_owner = ? WHERE id = ? AND state = 'queued'",
                         [(until, owner, row["id"]) for row in rows])
    return [Event(row["id"], row["request_id"], row["function"], row["trigger"],
                  bytes(row["payload"]), row["accepted"], row["attempts"] + 1, owner, until)
            for row in rows]


def _held(owner: str | None) -> tuple[str, tuple]:
    """The WHERE clause's addition that makes a settlement apply only while `owner`'s lease
    is the event's last (an event dead-lettered meanwhile stays so)."""
    if owner is None:
        return "", ()
    return " AND lease_owner = ? AND state <> 'dead'", (owner,)


def ack(conn, event_id: int, owner: str | None = None) -> bool:
    """The event ran successfully: it and its attempts are purged. With `owner`, only while
    that owner's lease is the event's last. Returns whether it was purged."""
    held, args = _held(owner)
    with conn.transaction():
        if not conn.execute(f"DELETE FROM events WHERE id = ?{held}",
                            (event_id, *args)).rowcount:
            return False
        conn.execute("DELETE FROM attempts WHERE event_id = ?", (event_id,))
    return True


def _add_attempt(conn, event_id: int, attempt: Attempt | None) -> None:
    if attempt is not None:
        conn.execute("INSERT INTO attempts (event_id, start, duration_ms, error_type, "
                     "error_message) VALUES (?, ?, ?, ?, ?)",
                     (event_id, attempt.start, attempt.duration_ms, attempt.error_type,
                      attempt.error_message))


def requeue(conn, event_id: int, due: float, attempt: Attempt | None, counted: bool = True,
            owner: str | None = None) -> bool:
    """Back to the queue until `due`; with the failed attempt's error, or (`counted=False`,
    the function could not take it: throttled, not ready) without using up an attempt. With
    `owner`, only while that owner's lease is the event's last. Returns whether it was."""
    held, args = _held(owner)
    with conn.transaction():
        if not conn.execute(f"UPDATE events SET state = 'queued', lease_until = NULL, "
                            f"due = ?, attempts = attempts - ? WHERE id = ?{held}",
                            (due, 0 if counted else 1, event_id, *args)).rowcount:
            return False
        _add_attempt(conn, event_id, attempt)
    return True


def bury(conn, event_id: int, reason: str, attempt: Attempt | None,
         owner: str | None = None) -> bool:
    """Into the dead-letter list, with the last attempt's error. With `owner`, only while
    that owner's lease is the event's last. Returns whether it was."""
    held, args = _held(owner)
    with conn.transaction():
        if not conn.execute(f"UPDATE events SET state = 'dead', lease_until = NULL, "
                            f"dead_reason = ? WHERE id = ?{held}",
                            (reason, event_id, *args)).rowcount:
            return False
        _add_attempt(conn, event_id, attempt)
    return True


def bury_expired(conn, function: str, cutoff: float, reason: str) -> int:
    """Dead-letter the function's queued events accepted before `cutoff` (too old to run)."""
    with conn.transaction():
        return conn.execute("UPDATE events SET state = 'dead', dead_reason = ? WHERE "
                            "function = ? AND state = 'queued' AND accepted < ?",
                            (reason, function, cutoff)).rowcount


def next_due(conn) -> float | None:
    row = conn.execute("SELECT MIN(due) FROM events WHERE state = 'queued'").fetchone()
    return row[0]


def queued_functions(conn, now: float) -> list[str]:
    """Functions with events due now."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT function FROM events WHERE state = 'queued' AND due <= ?", (now,))]


def queued_versions(conn, now: float) -> list[str]:
    """The published versions (`NAME:N`, resolved when the event was accepted) with events
    due now: the dispatcher runs them beside the functions it knows by name."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT function FROM events WHERE state = 'queued' AND due <= ? AND "
        "function LIKE '%:%'", (now,))]


def _attempts(conn, event_id: int) -> list[dict]:
    return [{"start": r["start"], "durationMs": round(r["duration_ms"], 3),
             "errorType": r["error_type"], "errorMessage": r["error_message"]}
            for r in conn.execute("SELECT * FROM attempts WHERE event_id = ? ORDER BY id",
                                  (event_id,))]


def _event(conn, row, payload: bool) -> dict:
    # An event runs as trigger `event`, as its invocation records say; the route that
    # accepted it (`invoke`: the Invoke API, `http`: a function URL) is its `route`. A
    # scheduled or file trigger's firing (route `schedule:N` / `file:N`) runs as that trigger.
    shown = trigger_fields(row["trigger"])
    if shown["trigger"] not in TRIGGER_KINDS:
        shown = {"trigger": "event"}
    out = {"requestId": row["request_id"], "function": row["function"], **shown,
           "route": row["trigger"], "accepted": row["accepted"], "state": row["state"],
           "attempts": row["attempts"], "due": row["due"], "deadReason": row["dead_reason"],
           "errors": _attempts(conn, row["id"])}
    if payload:
        out["payload"] = bytes(row["payload"]).decode("utf-8", "replace")
    return out


def dead_letters(conn, function: str, limit: int = 50,
                 cursor: int | None = None) -> tuple[list[dict], int | None]:
    """The function's dead-letter list, oldest first, with each attempt's error."""
    sql = "SELECT * FROM events WHERE function = ? AND state = 'dead'"
    args: list = [function]
    if cursor is not None:
        sql += " AND id > ?"
        args.append(cursor)
    rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_event(conn, r, payload=True) for r in rows], (rows[-1]["id"] if more else None)


def _dead(conn, function: str, request_ids: list[str] | None) -> tuple[str, list]:
    """The WHERE clause for a function's dead events: all of them, or those named. The ids
    go as one parameter (an array; SQLite: a JSON list), so the statement is one string
    whatever their number: a placeholder per id failed past 32,766 (SQLite) or 65,535
    (PostgreSQL) ids, a caller's 1 MB body holds more, and each count was a new statement."""
    where = "function = ? AND state = 'dead'"
    args: list = [function]
    if request_ids is not None:
        if conn.dialect == "postgresql":
            where += " AND request_id = ANY(?)"
            args.append(list(request_ids))
        else:
            where += " AND request_id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(request_ids)))
    return where, args


def replay(conn, function: str, request_ids: list[str] | None,
           now: float) -> list[str]:
    """Dead events (all of the function's, or those named) back to the queue, as if accepted
    now, with their retries restored; earlier attempts' errors are kept. Returns their ids."""
    where, args = _dead(conn, function, request_ids)
    with conn.transaction():
        rows = conn.execute(f"SELECT id, request_id FROM events WHERE {where}", args).fetchall()
        if rows:
            conn.executemany("UPDATE events SET state = 'queued', attempts = 0, due = ?, "
                             "accepted = ?, dead_reason = NULL, lease_owner = NULL "
                             "WHERE id = ?", [(now, now, r["id"]) for r in rows])
    return [r["request_id"] for r in rows]


def discard(conn, function: str, request_ids: list[str] | None) -> int:
    """Delete dead events (all of the function's, or those named) for good."""
    where, args = _dead(conn, function, request_ids)
    with conn.transaction():
        conn.execute(f"DELETE FROM attempts WHERE event_id IN (SELECT id FROM events WHERE "
                     f"{where})", args)
        return conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount


def find_event(conn, request_id: str) -> dict | None:
    """An event not yet acknowledged (queued, leased or dead), without its payload."""
    row = conn.execute("SELECT * FROM events WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else _event(conn, row, payload=False)


def counts(conn) -> dict[str, dict[str, int]]:
    """Per function, how many events are in each state."""
    out: dict[str, dict[str, int]] = {}
    for row in conn.execute(
            "SELECT function, state, COUNT(*) FROM events GROUP BY function, state"):
        out.setdefault(row[0], dict.fromkeys(EVENT_STATES, 0))[row[1]] = row[2]
    return out
