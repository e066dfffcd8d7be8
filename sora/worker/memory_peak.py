"""Max Memory Used: the peak memory of one instance, read once per invocation for its REPORT
line and record.

Lambda reports the execution environment's peak so far (a warm invocation after a large one
shows the large one's figure); so does this:
- where the instance has a cgroup (sora.isolation.cgroups), the group's own high-water mark
  (`memory.peak` on v2, `memory.max_usage_in_bytes` on v1): everything the instance started
  counts, its children and their page cache too, as in Lambda's environment;
- else the peak resident set (`VmHWM` of `/proc/<pid>/status`) of each process of the
  instance's tree as found at the first reading (the runtime, or bubblewrap, its init and the
  runtime), summed: their peaks need not coincide, so it errs high; processes started later
  are not seen.

Cheap on the warm path: each file is opened once and read again with one `pread` per
invocation (measured: 1.3 µs for the cgroup's file, 11 µs for a process's status file, against
~95 µs of worker CPU per invocation). The files are the kernel's (cgroupfs, procfs), never a
path the function could replace.
"""
from __future__ import annotations

import os

import psutil

from ..isolation.cgroups import InstanceGroup

MB = 1 << 20


class PeakMemory:
    def __init__(self, group: InstanceGroup | None, pid: int):
        self.group = group
        self.pid = pid
        self.fds: list[int] | None = None   # opened at the first reading
        self.in_group = False
        self.peak = 0   # bytes: the highest seen (a process that exited no longer counts)

    def _open(self) -> None:
        self.fds = []
        path = self.group.peak_memory_file() if self.group is not None else None
        if path is not None:
            try:
                self.fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                self.in_group = True
                return
            except OSError:
                pass   # (an old kernel without memory.peak) the processes' own peaks then
        try:
            root = psutil.Process(self.pid)
            pids = [root.pid, *(c.pid for c in root.children(recursive=True))]
        except (psutil.Error, ValueError):   # (ValueError: no pid yet, a container's)
            return
        for pid in pids:
            try:
                self.fds.append(os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass   # it has just exited

    def read(self) -> int:
        """The peak so far, in bytes."""
        if self.fds is None:
            self._open()
        if self.in_group:   # one file: the warm path, kept short
            try:
                self.peak = max(self.peak, int(os.pread(self.fds[0], 32, 0)))
            except (OSError, ValueError):
                pass
            return self.peak
        total = 0
        for fd in self.fds:
            try:
                data = os.pread(fd, 4096, 0)
            except OSError:
                continue   # the process has exited (ESRCH)
            at = data.find(b"VmHWM:")
            if at >= 0:
                total += int(data[at + 6:data.index(b"kB", at)]) * 1024
        self.peak = max(self.peak, total)
        return self.peak

    @property
    def peak_mb(self) -> int:
        """The peak last read, in MB rounded up."""
        return -(-self.peak // MB)

    def close(self) -> None:
        for fd in self.fds or ():
            os.close(fd)
        self.fds = []
