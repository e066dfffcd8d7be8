"""Dying with one's parent: PR_SET_PDEATHSIG, and the race it leaves open.

The kernel sends the signal when the parent dies only if the parent was alive when it was
asked for: a parent that died between the fork and the `prctl` (the supervisor killed with
-9 while it starts a child, a gunicorn master killed while it forks a worker) leaves a child
that nothing will ever signal. So after asking, the child checks that its parent is still
the process that forked it, and exits at once if not.
"""
from __future__ import annotations

import ctypes
import os
import signal

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1

# The pid of the process that forks next (set in it just before each fork, so a forked child
# sees its parent's pid here; subprocess runs the hook when it has a preexec_fn).
_forking_pid = os.getpid()


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


os.register_at_fork(before=_before_fork)


def die_with_parent(parent: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Send `sig` (SIGKILL) to this process when its parent dies; exit now if that has
    happened already. `parent`: the pid it must have (default: the process that forked it).
    Runs in the child, between fork and exec or just after a fork."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != (_forking_pid if parent is None else parent):
        os._exit(1)
