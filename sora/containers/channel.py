"""The channel folder of one container instance: the FIFOs it speaks the usual protocol on.

A container's stdout is the engine's (its log driver), so the instance's requests, answers
and logs go through FIFOs instead, in a folder the worker makes under its private run folder
(`<stateDir>/run/containers/<worker pid>-<n>/`) and the container gets read-only at
`/run/sora`:

    requests  worker -> runtime: one request line each (the runtime's stdin)
    control   runtime -> worker: READY, R/E/X answers (the runtime's SORA_CONTROL_FD)
    stdout    runtime -> worker: its stdout (log lines and end markers)
    stderr    runtime -> worker: its stderr

The worker opens its ends before the container starts, so nothing blocks: the read ends
O_RDONLY | O_NONBLOCK (a FIFO's read end with no writer yet does not poll readable: the
worker's loop sees nothing until the container opens it), `requests` O_RDWR (opening it needs
no reader, and the runtime's read-only open finds a writer at once). Once the runtime is
ready, `requests` is opened again write-only and the O_RDWR end closed, so a write after the
container died fails (EPIPE) as a pipe's would, rather than filling a buffer nobody reads.
The container's command is the wrapper below (`/bin/sh -c WRAPPER sh <runtime argv>`): it
opens the FIFOs as fd 3, 0, 1, 2 and execs the runtime, so the worker reads and writes
these descriptors exactly as a local process's pipes: no relay on the warm path.

The folder is root's (0711: the function's uid may open the FIFOs it knows the names of, not
list or add anything) and its FIFOs the function's uid's (0600). It is made with
no link followed: the run folder is the worker's own (0700, root), each component is opened
`O_NOFOLLOW` by descriptor and the FIFOs are made by `mknodat` in it. Opening a FIFO for
writing through a read-only bind mount works (the read-only check applies to regular files,
folders and links only), which `tests/integration/test_container_isolation.py` checks.
"""
from __future__ import annotations

import os
import shutil

MOUNT_POINT = "/run/sora"
NAMES = ("requests", "control", "stdout", "stderr")
WRAPPER = ('exec 3>/run/sora/control; '
           'exec "$@" </run/sora/requests >/run/sora/stdout 2>/run/sora/stderr')
CONTROL_FD = 3


def base_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "containers")


def _open_dir_nofollow(parent_fd: int, name: str, mode: int) -> int:
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent_fd)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise PermissionError(f"{name}: expected a folder of Sora's, got one of uid {st.st_uid}")
    return fd


class Channel:
    """The FIFO folder of one instance and the worker's ends of its FIFOs."""

    def __init__(self, run_dir: str, name: str, uid: int):
        """Make `<run_dir>/containers/<name>/` and its FIFOs (owned by `uid`), and open the
        worker's ends. `run_dir` is the worker's private run folder (root's, 0700)."""
        self.path = os.path.join(base_dir(run_dir), name)
        self.fds: dict[str, int] = {}
        run_fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            base_fd = _open_dir_nofollow(run_fd, "containers", 0o700)
            try:
                os.fchmod(base_fd, 0o700)
                dir_fd = _open_dir_nofollow(base_fd, name, 0o711)
            finally:
                os.close(base_fd)
        finally:
            os.close(run_fd)
        try:
            os.fchmod(dir_fd, 0o711)
            for fifo in NAMES:
                try:
                    os.unlink(fifo, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                os.mkfifo(fifo, 0o600, dir_fd=dir_fd)
                os.chown(fifo, uid, uid, dir_fd=dir_fd, follow_symlinks=False)
            # The worker's ends: none of these blocks (see the module's docstring).
            for fifo in ("control", "stdout", "stderr"):
                self.fds[fifo] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                                         dir_fd=dir_fd)
            self.fds["requests"] = os.open("requests", os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd)
            self._dir_fd = dir_fd
        except BaseException:
            os.close(dir_fd)
            self.close()
            raise

    def write_end_only(self) -> None:
        """The runtime has opened `requests` (it is ready): keep a write-only end of it, so
        a write after the container died fails (EPIPE) instead of filling the FIFO."""
        fd = self.fds.get("requests")
        if fd is None or fd < 0:
            return
        try:
            wfd = os.open("requests", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=self._dir_fd)
        except OSError:
            return   # no reader any more (ENXIO): it has just died; the control FIFO says so
        os.set_blocking(wfd, True)
        os.dup2(wfd, fd)   # the same descriptor number: the worker's files stay valid
        os.close(wfd)

    def fail(self, line: bytes) -> None:
        """Say on the control FIFO what the runtime would have said (`INIT <error>`) when no
        container could be made: the worker reads it, then the FIFO's end."""
        try:
            fd = os.open("control", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self._dir_fd)
        except OSError:
            return   # the worker has closed its end: the instance is gone already
        try:
            os.write(fd, line)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the worker's ends it still holds (the instance's files close their own)."""
        if getattr(self, "_dir_fd", -1) >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def remove(self) -> None:
        """Remove the folder (once its container is gone)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)


def remove_leftovers(run_dir: str, worker_pid: int | None = None) -> int:
    """Remove the channel folders a worker left (killed: its thread removed nothing), or
    with no pid every one whose worker is gone (a host killed with -9). Only root reaches
    the folder (`<run>/containers`, 0700); rmtree works by descriptors, following no link."""
    base = base_dir(run_dir)
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    removed = 0
    for name in names:
        owner = name.partition("-")[0]
        if not owner.isdigit():
            continue
        if (int(owner) == worker_pid) if worker_pid is not None else not _alive(int(owner)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
