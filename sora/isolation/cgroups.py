"""Resource limits per instance with cgroups: memory (the function's `memory`) and a pids limit.

Both cgroup versions are supported: v2 (one unified hierarchy, most current distributions) and
v1 (one hierarchy per controller, as on the machines Sora is developed on). Which one is in
force is reported by `/healthz` (`cgroups`). Each instance gets its own group,
`<root>/sora/<function>-<worker pid>-<n>`, made before it starts and removed once it is dead;
the instance's process joins it between fork and exec, so everything it starts is counted too.
A pre-started runtime (sora.runtimes.pool) was started the same way into a group of
its own (`_standby-<supervisor pid>-<n>`, no memory limit); the worker that takes it renames
that group to its instance's name and sets the limit, before the runtime loads anything.
Moving a running process between groups would do too, but takes the kernel 7-15 ms per move
(it waits for an RCU grace period), all of it on a cold start's path; a rename takes none.

A memory-limit kill is told from any other death by the group's own OOM-kill counter
(`memory.events` on v2, `memory.oom_control` on v1), so the caller gets Sora.OutOfMemory only
when the limit killed it. Without a usable hierarchy (no cgroup filesystem, no permission),
limits are off and `/healthz` says so; nothing else changes.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("sora.worker")

ROOT = "/sys/fs/cgroup"
# Processes and threads an instance may have. Idle Node already runs 7 threads and a busy one
# more (libuv's pool, GC); a too-low limit makes Node hang, so this only stops fork bombs.
PIDS_MAX = 512


def detect(root: str = ROOT) -> str | None:
    """"v2", "v1" or None: the cgroup version whose memory controller Sora can use."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        try:
            with open(os.path.join(root, "cgroup.controllers")) as fh:
                if "memory" in fh.read().split():
                    return "v2" if os.access(root, os.W_OK) else None
        except OSError:
            return None
    memory = os.path.join(root, "memory")
    if os.path.isdir(memory) and os.path.exists(os.path.join(memory, "memory.limit_in_bytes")):
        return "v1" if os.access(memory, os.W_OK) else None
    return None


STANDBY_PREFIX = "_standby-"   # not a function name (those have no "_"): no clash



def read_oom_kills(memory_dir: str, v2: bool) -> int | None:
    """The `oom_kill` count of a memory cgroup folder (v2 `memory.events`, v1
    `memory.oom_control`); None when it cannot be read (the group is gone)."""
    name = "memory.events" if v2 else "memory.oom_control"
    try:
        with open(os.path.join(memory_dir, name)) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        pass
    return None

class InstanceGroup:
    """The cgroup(s) of one instance (or, with no memory limit, of a pre-started runtime)."""

    def __init__(self, version: str, name: str, memory_mb: int | None, root: str = ROOT):
        self.version = version
        self.name = name
        self.memory_mb = memory_mb
        if version == "v2":
            self.dirs = {"memory": os.path.join(root, "sora", name)}
            self.dirs["pids"] = self.dirs["memory"]
        else:
            self.dirs = {c: os.path.join(root, c, "sora", name) for c in ("memory", "pids")}
        for controller, path in self.dirs.items():
            os.makedirs(path, exist_ok=True)
        self._limit()

    def _limit(self) -> None:
        self._write("pids", "pids.max", PIDS_MAX)
        if self.memory_mb is None:
            return
        limit = self.memory_mb * 1024 * 1024
        if self.version == "v2":
            self._write("memory", "memory.max", limit)
            self._write("memory", "memory.swap.max", 0, optional=True)
        else:
            self._write("memory", "memory.limit_in_bytes", limit)
            # No swap beyond the limit, where the kernel accounts swap.
            self._write("memory", "memory.memsw.limit_in_bytes", limit, optional=True)

    def take_over(self, standby: str) -> None:
        """Become the group a pre-started runtime runs in: it is renamed to this group's name
        (this group's empty folders make way) and gets this group's limits. No process
        moves. Raises OSError if it cannot (the caller then gives up on that runtime)."""
        for path in sorted(set(self.dirs.values())):
            os.rmdir(path)
            os.rename(os.path.join(os.path.dirname(path), standby), path)
        self._limit()

    def _write(self, controller: str, name: str, value: int, optional: bool = False) -> None:
        try:
            with open(os.path.join(self.dirs[controller], name), "w") as fh:
                fh.write(str(value))
        except OSError:
            if not optional:
                raise

    def procs_files(self) -> list[str]:
        return sorted({os.path.join(d, "cgroup.procs") for d in self.dirs.values()})

    def join(self, pid: int) -> None:
        for path in self.procs_files():
            with open(path, "w") as fh:
                fh.write(str(pid))

    def oom_kills(self) -> int:
        return read_oom_kills(self.dirs["memory"], self.version == "v2") or 0

    def peak_memory_file(self) -> str:
        """The group's memory high-water mark, in bytes (Max Memory Used: sora.worker.
        memory_peak). v2's `memory.peak` is missing before Linux 5.19: opening it fails."""
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        return os.path.join(self.dirs["memory"], name)

    def remove(self) -> None:
        for path in sorted(set(self.dirs.values())):
            try:
                os.rmdir(path)
            except OSError:
                pass  # still has a process (reaped later) or already gone


class GroupMaker:
    """Makes the numbered groups `<prefix><n>` of one owner (a worker's instances, the pool's
    pre-started runtimes); if one cannot be made, limits are off for that owner from then on,
    logged once."""

    def __init__(self, prefix: str, what: str):
        self.version = detect()   # "v1", "v2" or None
        self.prefix, self.what = prefix, what
        self.serial = 0

    def new(self, memory_mb: int | None) -> InstanceGroup | None:
        if self.version is None:
            return None
        self.serial += 1
        try:
            return InstanceGroup(self.version, f"{self.prefix}{self.serial}", memory_mb)
        except OSError as exc:
            log.error("cannot make a cgroup for %s (%s); their limits are off", self.what, exc)
            self.version = None
            return None


def remove_leftovers(function: str, worker_pid: int, root: str = ROOT) -> None:
    """The groups of a worker that died without removing them (the supervisor calls this when
    it reaps the worker; its instances died with it)."""
    remove_groups(f"{function}-{worker_pid}-", root)


def remove_groups(prefix: str, root: str = ROOT, wait: float = 0.0) -> int:
    """Remove Sora's empty groups whose names start with `prefix` (the pre-started runtimes'
    are STANDBY_PREFIX + the supervisor's pid). Returns how many are left (a process is still
    in them) after trying for up to `wait` seconds."""
    return _remove(lambda name: name.startswith(prefix), root, wait)


def remove_orphaned_groups(root: str = ROOT, wait: float = 0.0) -> int:
    """Remove the empty groups whose owner (the worker, or for a pre-started runtime's the
    supervisor: its pid is in the name) is gone: what an owner killed with -9 left, or a group
    still busy when its owner tried. The supervisor sweeps at start and at stop. Returns how
    many such groups are left (their processes are still dying) after up to `wait` seconds."""
    def owner_gone(name: str) -> bool:
        parts = name.rsplit("-", 2)
        return len(parts) == 3 and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}")
    return _remove(owner_gone, root, wait)


def group_bases(root: str = ROOT) -> tuple[str, ...]:
    """The folders Sora's groups are made in: `sora/` of the unified hierarchy (v2) or of the
    memory and pids ones (v1)."""
    return (os.path.join(root, "sora"), os.path.join(root, "memory", "sora"),
            os.path.join(root, "pids", "sora"))


def _remove(match, root: str, wait: float) -> int:
    # A killed process leaves its group a moment after it is reaped (and a sandbox's init and
    # runtime die a moment after bubblewrap): `wait` polls for that.
    deadline = time.monotonic() + wait
    while True:
        left = 0
        for base in group_bases(root):
            try:
                names = [n for n in os.listdir(base) if match(n)]
            except OSError:
                continue
            for name in names:
                try:
                    os.rmdir(os.path.join(base, name))
                except FileNotFoundError:
                    pass
                except OSError:
                    left += 1
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def join_in_child(procs_files: list[str]) -> None:  # runs between fork and exec
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)
