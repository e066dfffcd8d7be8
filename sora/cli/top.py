"""`sora top`: a live terminal view of each function (what `GET /api/stats` gives: state,
instances busy/idle, calls, errors, p50/p99 and cold starts over the last hour, requests
queued for an instance, async events queued and dead), redrawn every `--interval` seconds.

    sora top [--interval 2] [--window 3600]   live, until q or Ctrl-C
    sora top --once                           one frame, no escape sequences (scripts, tests)
    sora top --json                           one JSON document: /api/stats' answer

Live, it draws on the terminal's alternate screen with the cursor hidden and reads keys
unbuffered (cbreak), and gives all of it back however it ends (q, Ctrl-C, an error). A host
that stops answering (or answers 5xx) shows as a line in the frame, and the view carries on
asking; a refusal (401, 403: an admin key is needed) ends it with the host's message.
Function names and a FATAL function's reason (its load error: the function's text) are printed
through output.shown, so no escape sequence of a function's reaches the terminal.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import select
import shutil
import sys
import time

from .host import ApiError, Host, HostDown, CliError
from .output import emit_json, shown

HEADERS = ["FUNCTION", "STATE", "BUSY/IDLE", "CALLS", "ERRORS", "P50", "P99", "COLD",
           "QUEUED", "ASYNC Q/DEAD"]
# The right-aligned columns: numbers.
NUMERIC = {"CALLS", "ERRORS", "P50", "P99", "COLD", "QUEUED", "ASYNC Q/DEAD"}
QUIT_KEYS = {"q", "Q"}

# Alternate screen and hidden cursor on entry; the opposite on exit. Each frame goes home and
# clears the screen below what it draws.
ENTER = "\x1b[?1049h\x1b[?25l"
LEAVE = "\x1b[?25h\x1b[?1049l"
HOME = "\x1b[H"
CLEAR_BELOW = "\x1b[J"
CLEAR_LINE = "\x1b[K"


# --- a frame --------------------------------------------------------------------------------

def ms(value) -> str:
    """A duration in ms as a person reads it: `0.84ms`, `12.3ms`, `1.25s`; `-` for none."""
    if not isinstance(value, (int, float)):
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f}s"
    if value >= 10:
        return f"{value:.1f}ms"
    return f"{value:.2f}ms"


def _count(value) -> str:
    return str(value) if isinstance(value, int) else "-"


def instances(item: dict) -> str:
    """`busy/idle` (with `+N` starting); the instance count alone from a host whose workers do
    not say which are busy."""
    if isinstance(item.get("busy"), int) and isinstance(item.get("idle"), int):
        text = f"{item['busy']}/{item['idle']}"
        if isinstance(item.get("starting"), int) and item["starting"]:
            text += f" +{item['starting']}"
        return text
    return _count(item.get("instances"))


def row_of(name: str, item: dict) -> list[str]:
    events = item.get("events") if isinstance(item.get("events"), dict) else {}
    return [shown(name), shown(str(item.get("state") or "-")), instances(item),
            _count(item.get("calls")), _count(item.get("errors")), ms(item.get("p50")),
            ms(item.get("p99")), _count(item.get("coldStarts")), _count(item.get("queued")),
            f"{_count(events.get('queued'))}/{_count(events.get('dead'))}"]


def window_text(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    if seconds % 86400 == 0:
        return f"{seconds // 86400:.0f}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600:.0f}h"
    if seconds % 60 == 0:
        return f"{seconds // 60:.0f}m"
    return f"{seconds:.0f}s"


def frame(body: dict, url: str, now: float) -> list[str]:
    """The lines of one frame for /api/stats' `body`."""
    functions = body.get("functions") if isinstance(body.get("functions"), dict) else {}
    clock = dt.datetime.fromtimestamp(now).strftime("%H:%M:%S")
    totals = [sum(i.get(k) or 0 for i in functions.values() if isinstance(i, dict))
              for k in ("calls", "errors")]
    lines = [f"sora top  {url}  {clock}  figures over the last "
             f"{window_text(body.get('window'))}: {totals[0]} calls, {totals[1]} errors", ""]
    rows = [row_of(name, item) for name, item in sorted(functions.items())
            if isinstance(item, dict)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(HEADERS)]
    for row in [HEADERS, *rows]:
        lines.append("  ".join(cell.rjust(w) if h in NUMERIC else cell.ljust(w)
                               for cell, w, h in zip(row, widths, HEADERS)).rstrip())
    if not rows:
        lines.append("no functions")
    reasons = [(name, item.get("reason")) for name, item in sorted(functions.items())
               if isinstance(item, dict) and item.get("reason")
               and item.get("state") != "RUNNING"]
    if reasons:
        lines.append("")
        lines.extend(f"{shown(name)}: {shown(str(reason))}" for name, reason in reasons)
    return lines


def fit(lines: list[str], columns: int, rows: int) -> list[str]:
    """What the screen holds: each line cut to its width (a wrapped line would push the frame
    off the screen) and as many lines as it has."""
    kept = [line if len(line) <= columns else line[:max(columns - 1, 0)] + "…"
            for line in lines]
    if len(kept) > rows:
        kept = kept[:max(rows - 1, 0)] + [f"… {len(lines) - rows + 1} more lines"[:columns]]
    return kept


# --- the live view --------------------------------------------------------------------------

def fetch(host: Host, window: int) -> dict:
    return host.get_json("/api/stats", params={"window": window})


@contextlib.contextmanager
def keys_unbuffered(stdin):
    """stdin in cbreak mode (keys come at once, not after Enter; Ctrl-C still interrupts),
    restored on exit; nothing when stdin is not a terminal."""
    try:
        fd = stdin.fileno()
        is_tty = os.isatty(fd)
    except (AttributeError, ValueError, OSError):
        is_tty = False
    if not is_tty:
        yield None
        return
    import termios
    import tty
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_key(fd: int | None, seconds: float) -> str | None:
    """A key pressed within `seconds` (None: none, or no terminal to read)."""
    if fd is None:
        time.sleep(seconds)
        return None
    ready, _, _ = select.select([fd], [], [], max(seconds, 0))
    if not ready:
        return None
    data = os.read(fd, 32)
    if not data:   # end of input: nothing more will come; wait out the interval
        time.sleep(seconds)
        return None
    return data.decode("utf-8", "replace")


def live(host: Host, window: int, interval: float, stdin, stdout,
         size=shutil.get_terminal_size) -> int:
    with keys_unbuffered(stdin) as fd:
        stdout.write(ENTER)
        stdout.flush()
        try:
            while True:
                started = time.monotonic()
                try:
                    lines = frame(fetch(host, window), host.url, time.time())
                except (HostDown, ApiError) as exc:
                    if isinstance(exc, ApiError) and exc.status < 500:
                        raise   # a key without admin, an old host: asking again won't help
                    lines = [f"sora top  {host.url}  "
                             f"{dt.datetime.now().strftime('%H:%M:%S')}", "",
                             shown(str(exc)), "", f"asking again every {interval:g}s"]
                columns, rows = size()
                lines = fit(lines + ["", "q or Ctrl-C quits"], columns, rows)
                stdout.write(HOME + "".join(line + CLEAR_LINE + "\r\n"
                                            for line in lines) + CLEAR_BELOW)
                stdout.flush()
                # The next frame `interval` after this one began, or at once on a key: q quits,
                # any other redraws.
                deadline = started + interval
                key = wait_for_key(fd, deadline - time.monotonic())
                if key and QUIT_KEYS & set(key):
                    return 0
        except KeyboardInterrupt:
            return 0
        finally:
            stdout.write(LEAVE)
            stdout.flush()


def cmd_top(args) -> int:
    if args.interval <= 0:
        raise CliError(f"top: --interval: expected seconds above 0, got {args.interval:g}", 2)
    host = Host.from_args(args)
    if args.json:
        emit_json(fetch(host, args.window))
        return 0
    if args.once:
        print("\n".join(frame(fetch(host, args.window), host.url, time.time())))
        return 0
    # A frame waits for its answer: --timeout's default (960 s, for long invocations) would
    # freeze the view on a host that hangs.
    host.timeout = min(host.timeout, max(5.0, 2 * args.interval))
    return live(host, args.window, args.interval, sys.stdin, sys.stdout)


def add_commands(command) -> None:
    """`sora top`, with `command(name, func, text)` from main.parser()."""
    cmd = command("top", cmd_top, "a live view of each function: state, instances busy/idle, "
                  "calls, errors, p50/p99 and cold starts over the last hour, queued requests "
                  "and async events; q or Ctrl-C quits (needs an admin key)")
    cmd.add_argument("--interval", "-n", type=float, default=2.0,
                     help="seconds between frames (default 2)")
    cmd.add_argument("--window", type=int, default=3600,
                     help="seconds of records the figures cover (default 3600, at most 7 "
                     "days)")
    cmd.add_argument("--once", action="store_true",
                     help="print one frame and exit (no escape sequences)")
