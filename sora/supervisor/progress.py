"""What the operator reads while the host starts: each function on its way to ready.

After "Sora is serving", every function gets a line when it is ready or FATAL (with the
reason), and, while it is still on its way, a line every `PROGRESS_EVERY` seconds saying what
it waits for: its setup command (a first `make run` spends minutes in examples/node-ric's
`npm install`, which builds aws-lambda-ric's native code) or its worker starting. A last line sums
up once every function has settled. Restarts after that are the transitions' own log lines.

Policy only: the arbiter passes what it knows of each function (`FunctionProgress`) and logs
the lines this returns, so it is unit-tested without processes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .child import State

# Often enough that a waiting operator sees the host is alive; rare enough that a 3.5-minute
# setup makes ~14 lines, not a screenful.
PROGRESS_EVERY = 15.0


@dataclass(frozen=True)
class FunctionProgress:
    """One function as the arbiter sees it now."""
    name: str
    state: State
    reason: str = ""
    setup_command: str | None = None   # the setup command running, if one is
    setup_log: str | None = None


class StartupProgress:
    def __init__(self, names: list[str], started: float, every: float = PROGRESS_EVERY):
        self.started = started
        self.every = every
        self.pending = list(names)           # not yet ready nor FATAL, in config order
        self.ready: list[str] = []
        self.failed: list[str] = []
        self.next_report: dict[str, float] = {}   # name -> when its next "still ..." line is due
        self.summed_up = not names

    def lines(self, now: float, functions: list[FunctionProgress]) -> list[tuple[int, str]]:
        """(log level, text) to log now."""
        out: list[tuple[int, str]] = []
        elapsed = now - self.started
        by_name = {f.name: f for f in functions}
        for name in list(self.pending):
            fn = by_name.get(name)
            if fn is None:
                continue
            if fn.state is State.RUNNING:
                self.pending.remove(name)
                self.ready.append(name)
                out.append((logging.INFO, f"function {name}: ready after {elapsed:.0f}s"))
            elif fn.state is State.FATAL:
                self.pending.remove(name)
                self.failed.append(name)
                out.append((logging.ERROR, f"function {name}: FATAL: {fn.reason}"))
            elif fn.state is State.STOPPED:
                self.pending.remove(name)
            elif now >= self.next_report.get(name, 0.0):
                self.next_report[name] = now + self.every
                what, detail = waiting_for(fn)
                out.append((logging.INFO, f"function {name}: {what} for {elapsed:.0f}s"
                                          + (f": {detail}" if detail else "")))
        if not self.pending and not self.summed_up:
            self.summed_up = True
            summary = f"{len(self.ready)} of {len(self.ready) + len(self.failed)} function(s) " \
                      f"ready after {elapsed:.0f}s"
            if self.failed:
                out.append((logging.ERROR, f"{summary}; FATAL: {', '.join(self.failed)} "
                                           "(`sora ls` shows why)"))
            else:
                out.append((logging.INFO, summary))
        return out


def waiting_for(fn: FunctionProgress) -> tuple[str, str]:
    """What the function waits for, and a detail to show with it."""
    if fn.state is State.SETUP:
        log = f" (log: {fn.setup_log})" if fn.setup_log else ""
        return "setup running", (f"{fn.setup_command!r}{log}" if fn.setup_command else "")
    if fn.state is State.BACKOFF:
        return "restarting", fn.reason
    return "worker starting", ""
