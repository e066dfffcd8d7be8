"""What the CLI prints: JSON for scripts, tables for people, and a function's text made safe
for a terminal."""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap


def emit_json(value) -> None:
    print(json.dumps(value, indent=2))


# Below this much room beside the other columns, the last column goes under its row instead.
MIN_WRAPPED_WIDTH = 30
UNDER_INDENT = "    "


def table(rows: list[list], headers: list[str], wrap_at: int | None = None) -> None:
    """Columns padded to their widest cell. With `wrap_at` (the terminal's width), the last
    column is wrapped to fit, never cut: beside the others while it has MIN_WRAPPED_WIDTH
    there, else on lines of its own under its row."""
    cells = [[str("-" if c is None else c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    indent = sum(widths[:-1]) + 2 * (len(widths) - 1)
    beside = wrap_at is None or wrap_at - indent >= MIN_WRAPPED_WIDTH
    for n, row in enumerate([headers, *cells]):
        lead = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths))
        last = row[-1].replace("\n", " ")
        if wrap_at is None:
            print(f"{lead}  {last}".rstrip())
        elif beside:
            parts = textwrap.wrap(last, wrap_at - indent, break_on_hyphens=False) or [""]
            print(f"{lead}  {parts[0]}".rstrip())
            for part in parts[1:]:
                print(" " * indent + part)
        else:
            print(lead.rstrip())
            if n and last not in ("", "-"):
                for part in textwrap.wrap(f"{headers[-1].lower()}: {last}",
                                          max(wrap_at - len(UNDER_INDENT), 20),
                                          break_on_hyphens=False):
                    print(UNDER_INDENT + part)


def terminal_width() -> int | None:
    """The width to wrap tables at: the terminal's, or $COLUMNS; None (no wrapping) when the
    output goes to a pipe or file and $COLUMNS is not set."""
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


# What a terminal acts on rather than shows: C0 controls but tab (newline too), DEL and C1.
# A function's text (its errors, its log lines, its load error in a FATAL reason) is printed
# with them as \xNN: else it could move the cursor, rewrite the screen, set the clipboard
# (OSC 52), or start a line of its own that reads as Sora's ("status: ok"; `sora inspect`
# keeps an error message's newlines, and indents the lines after them).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text, newlines: bool = False):
    """`text` (a function's) as the terminal may print it; anything else as it is. With
    `newlines`, a newline stays (the caller indents what follows it)."""
    pattern = _CONTROL_BUT_NEWLINE if newlines else _CONTROL
    if not isinstance(text, str) or not pattern.search(text):
        return text
    return pattern.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def trigger_label(item: dict) -> str | None:
    """What started an invocation, as the records' JSON gives it: `http`, `event`, or a
    schedule or file trigger with its index in the function's `trigger` list (`schedule:0`)."""
    trigger = item.get("trigger")
    index = item.get("triggerIndex")
    if trigger is None or index is None:
        return trigger
    return f"{trigger}:{index}"


def ago(stamp, now: float) -> str:
    """An epoch time (a host's `lastHeard`, a trigger's last firing) as its age: `0.4s ago`,
    `3m ago`, `2h ago`, `5d ago`; `-` when there is none."""
    if not isinstance(stamp, (int, float)):
        return "-"
    seconds = max(0.0, now - stamp)
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h ago"
    return f"{seconds // 86400:.0f}d ago"
