"""When a changed file is complete, and what its change was: the file watcher's policy, apart
from inotify and the file system so it is unit-tested with plain values.

inotify says a file changed, not that its writer is done: a file copied in over a slow link
sends a stream of modifications. A change is therefore held (`Pending`) until the file has been
quiet for the trigger's debounceMs and two looks at it (at the change, and after the quiet
time) find the same size, mtime, ctime and inode; only then does it count once. What it
counts as comes from comparing with what was last processed (file_seen, persisted): absent
there, it is created; there with another size or mtime, modified; there and gone now,
deleted; unchanged, nothing (a touch of the same bytes at the same mtime, or a file created and
removed before it settled).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..store.file_seen import Seen
from .watched_folder import FileStat

WAIT = "wait"
NOTHING = "nothing"
CREATED = "created"
MODIFIED = "modified"
DELETED = "deleted"


@dataclass
class Pending:
    """A path that changed and has not been dealt with yet."""
    changed: float                  # monotonic time of the last change noticed
    stat: FileStat | None           # what the last look found (None: no regular file)
    retry_at: float = 0.0           # monotonic: not before (the queue refused it, or an error)


def look(pending: Pending, current: FileStat | None, seen: Seen | None, now: float,
         quiet: float) -> str:
    """What to do with a pending path whose current state is `current` (None: no regular file
    there now), given what was last processed (`seen`): WAIT (updates `pending` when the file
    changed since the last look), or the settled verdict."""
    if current != pending.stat:
        pending.stat = current
        pending.changed = now
        return WAIT
    if now - pending.changed < quiet:
        return WAIT
    if current is None:
        return DELETED if seen is not None else NOTHING
    if seen is None:
        return CREATED
    if (seen.size, seen.mtime_ns) == (current.size, current.mtime_ns):
        return NOTHING
    return MODIFIED


def differs(current: FileStat, seen: Seen | None) -> bool:
    """A file found by a scan is worth a look: never processed, or changed since."""
    return seen is None or (seen.size, seen.mtime_ns) != (current.size, current.mtime_ns)
