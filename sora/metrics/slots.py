"""Stable slot ids for the processes that write metric files.

prometheus_client's multiprocess mode names each process's files by an identifier (its pid by
default): with pids, every restart of a gateway worker or the recorder would leave files behind
(the folder grows) and a new process would start its counters from zero beside the dead one's
files. Sora names them by slot instead: `<role>-<n>` (`gateway-http-0`, `recorder-0`, ...), n
the lowest slot whose lock file `<role>-<n>.lock` no live process holds (flock LOCK_EX |
LOCK_NB, held for the process's life; the kernel drops it when the process dies, however it
dies). A restarted process takes its predecessor's slot, reads its files back and counts on
from there: a counter never goes back, no count is made twice, and the folder holds at most
one set of files per slot that ever ran at once.

The lock file holds the pid of its holder, so the /metrics scrape can name each process by its
slot (`process` label of the process metrics).
"""
from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass

ROLE_RE = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
MAX_SLOTS = 256   # far above any role's processes (gatewayWorkers is at most 64)


class NoSlot(Exception):
    pass


@dataclass
class Slot:
    name: str   # `<role>-<n>`
    fd: int     # the lock file, held open (and locked) for the process's life

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def take_slot(directory: str, role: str) -> Slot:
    """Lock the lowest free slot of `role` in `directory` and write this pid into it."""
    if not ROLE_RE.match(role):
        raise ValueError(f"not a metrics role: {role!r}")
    for n in range(MAX_SLOTS):
        name = f"{role}-{n}"
        # O_CLOEXEC: a child (none of these processes starts one that should hold it) must
        # not keep the slot locked after this process dies.
        fd = os.open(os.path.join(directory, name + ".lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return Slot(name, fd)
    raise NoSlot(f"all {MAX_SLOTS} metric slots of {role} in {directory} are held")


def slot_holders(directory: str) -> dict[int, str]:
    """pid -> slot name, for the slots whose holder is alive (its lock is held)."""
    holders: dict[int, str] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return holders
    for entry in names:
        if not entry.endswith(".lock"):
            continue
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                # A lock we can take is nobody's: its holder is gone.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue
            except BlockingIOError:
                pass
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        if text.isdigit():
            holders[int(text)] = entry[:-len(".lock")]
    return holders
