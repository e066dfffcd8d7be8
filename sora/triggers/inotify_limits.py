"""Whether the kernel will let a file watcher add its inotify watches, and if not, what to raise.

inotify counts watches (one per watched folder) and instances (one per watcher) per user, and
refuses more than `fs.inotify.max_user_watches` / `max_user_instances` with ENOSPC / EMFILE,
which say nothing useful to an operator. So a watcher counts the folders it needs before it
starts, compares with what the limits leave free, and fails with an error naming the sysctl and
the value that would do.

The limits and the usage are read through module-level functions (`read_limits`,
`read_usage`) so tests can substitute them.
"""
from __future__ import annotations

import errno
import os

LIMITS = {"watches": "/proc/sys/fs/inotify/max_user_watches",
          "instances": "/proc/sys/fs/inotify/max_user_instances"}


class InotifyLimit(Exception):
    """The watches or instances a watcher needs are more than the kernel allows this user."""


def read_limits() -> tuple[int, int]:
    """(max_user_watches, max_user_instances) as the kernel has them now."""
    with open(LIMITS["watches"]) as fh:
        watches = int(fh.read())
    with open(LIMITS["instances"]) as fh:
        instances = int(fh.read())
    return watches, instances


def read_usage(uid: int | None = None) -> tuple[int, int]:
    """(watches, instances) of inotify in use by the processes of `uid` (default: ours),
    counted from /proc/PID/fdinfo: the kernel keeps the count but does not show it."""
    uid = os.geteuid() if uid is None else uid
    watches = instances = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:              # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                    lines = fh.read().splitlines()
            except OSError:
                continue
            instances += 1
            watches += sum(line.startswith("inotify wd:") for line in lines)
    return watches, instances


def _suggest(needed: int) -> int:
    """A round value comfortably above `needed` to put in the sysctl."""
    value = 8192
    while value < 2 * needed:
        value *= 2
    return value


def check(path: str, folders: int, instances: int = 1) -> None:
    """Raise InotifyLimit if watching `folders` folders of `path` with `instances` new inotify
    instances would pass the user's limits; the message says which sysctl to raise, and to
    what."""
    max_watches, max_instances = read_limits()
    used_watches, used_instances = read_usage()
    if used_watches + folders > max_watches:
        raise InotifyLimit(
            f"watching {path} needs {folders} inotify watches (one per folder), but "
            f"{used_watches} of fs.inotify.max_user_watches = {max_watches} are in use: raise "
            f"it with `sysctl fs.inotify.max_user_watches={_suggest(used_watches + folders)}` "
            f"(and in /etc/sysctl.d/ to keep it after a reboot)")
    if used_instances + instances > max_instances:
        raise InotifyLimit(
            f"watching {path} needs {instances} more inotify instance(s), but "
            f"{used_instances} of fs.inotify.max_user_instances = {max_instances} are in use: "
            f"raise it with `sysctl fs.inotify.max_user_instances="
            f"{max(_suggest(used_instances + instances) // 16, 256)}` (and in /etc/sysctl.d/ "
            f"to keep it after a reboot)")


def describe_os_error(path: str, exc: OSError, folders: int) -> str:
    """The same advice when the kernel refused a watch anyway (another process took the room
    between the check and the watch): ENOSPC is the watches limit, EMFILE the instances'."""
    text = str(exc)
    if exc.errno == errno.ENOSPC or "No space left" in text or "limit" in text.lower():
        return (f"watching {path} ({folders} folders): the kernel refused an inotify watch "
                f"({text}): raise fs.inotify.max_user_watches, e.g. `sysctl "
                f"fs.inotify.max_user_watches={_suggest(folders + 8192)}`")
    if exc.errno == errno.EMFILE or "Too many open files" in text:
        return (f"watching {path}: the kernel refused an inotify instance ({text}): raise "
                f"fs.inotify.max_user_instances, e.g. `sysctl fs.inotify.max_user_instances=512`")
    return f"watching {path}: {text}"
