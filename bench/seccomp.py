"""What the sandbox's seccomp filter (sora.isolation.seccomp) costs a cold start.

Starts examples/hello's sandbox (sandbox.wrap, as an instance is started) around a few
commands, with the filter and without it (the same command line less `--seccomp FD`),
alternating the two (and which goes first) so that the machine's drift touches both alike,
and prints the median time from spawn to exit of each, and the CPU time it used (counted by a
cgroup of the benchmark's own, which takes in bubblewrap, its init and the command):
  - `/bin/true`: the sandbox alone (bubblewrap's namespaces and mounts, loading the filter);
  - `python -c pass` (this interpreter), `node -e ''`: an interpreter's start, every system
    call of which now passes the filter;
  - one system call, from Python inside the sandbox (getppid, ioctl).
The filter is compiled once per process (seccomp.program(), timed here too); each spawn only
writes it into a pipe. Run as root, as Sora runs (sandbox_uid, setpriv).

    .venv/bin/python bench/seccomp.py [--samples 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import HELLO, ROOT

sys.path.insert(0, str(ROOT))
from sora.config import load_function_config   # noqa: E402
from sora.isolation import sandbox, seccomp     # noqa: E402

COMMANDS = {"/bin/true": ["/bin/true"], "python -c pass": [sys.executable, "-c", "pass"],
            "node -e ''": ["node", "-e", ""]}
# Per system call, inside the sandbox: getppid, which the filter always allows (the kernel's
# seccomp action cache then skips the filter), and ioctl, which has rules on its arguments
# (TIOCSTI), so the filter runs on each call.
PER_CALL = r'''
import fcntl, os, sys, termios, time
r, w = os.pipe()
calls = 200000
for name, call in (("getppid", os.getppid),
                   ("ioctl", lambda: fcntl.ioctl(r, termios.FIONREAD, b"    "))):
    start = time.process_time()   # CPU time: it holds still on a loaded machine
    for _ in range(calls):
        call()
    print(name, (time.process_time() - start) / calls * 1e9)
'''


def without_filter(argv: list[str]) -> list[str]:
    slot = argv.index("--seccomp")
    return argv[:slot] + argv[slot + 2:]


class CpuGroup:
    """A cgroup that counts the CPU time of everything spawned into it (bubblewrap, its init
    and the command): unlike wall time, it holds still on a loaded machine."""

    def __init__(self) -> None:
        name = f"sora-bench-seccomp-{os.getpid()}"
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):   # v2
            self.path, self.counter = f"/sys/fs/cgroup/{name}", "cpu.stat"
        else:                                                      # v1
            self.path, self.counter = f"/sys/fs/cgroup/cpuacct/{name}", "cpuacct.usage"
        os.mkdir(self.path)

    def join(self) -> None:   # in the child, before exec
        with open(os.path.join(self.path, "cgroup.procs"), "w") as fh:
            fh.write(str(os.getpid()))

    def used_ms(self) -> float:
        with open(os.path.join(self.path, self.counter)) as fh:
            text = fh.read()
        if self.counter == "cpu.stat":
            return int(text.split("usage_usec ")[1].split()[0]) / 1000
        return int(text) / 1e6

    def remove(self) -> None:
        os.rmdir(self.path)


def spawn_ms(argv: list[str], cwd: str, group: CpuGroup) -> tuple[float, float]:
    """Wall time from spawn to exit, and the CPU time the sandbox used."""
    start, cpu = time.perf_counter(), group.used_ms()
    with seccomp.passed_to(argv) as (command, fds):
        subprocess.run(command, cwd=cwd, pass_fds=fds, check=True, stdin=subprocess.DEVNULL,
                       preexec_fn=group.join)
    return (time.perf_counter() - start) * 1000, group.used_ms() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    fn = load_function_config(str(HELLO))
    start = time.perf_counter()
    seccomp.program()
    print(f"compiling the filter (once per process, with pyseccomp's import): "
          f"{(time.perf_counter() - start) * 1000:.1f} ms, {len(seccomp.program())} bytes")
    group = CpuGroup()
    try:
        spawns(fn, group, args.samples)
    finally:
        group.remove()


def spawns(fn, group: CpuGroup, samples: int) -> None:
    for label, command in COMMANDS.items():
        filtered = sandbox.wrap(command, fn)
        plain = without_filter(filtered)
        times = {"with": [], "without": []}
        for sample in range(samples):
            pair = [("with", filtered), ("without", plain)]
            for kind, argv in pair if sample % 2 else reversed(pair):   # neither always first
                times[kind].append(spawn_ms(argv, fn.directory, group))
        for index, what in ((0, "wall"), (1, "CPU")):
            with_ms, without_ms = (statistics.median(t[index] for t in times[k])
                                   for k in ("with", "without"))
            print(f"{label:16} {what:4} with the filter {with_ms:6.2f} ms, without "
                  f"{without_ms:6.2f} ms (median of {samples}; difference "
                  f"{with_ms - without_ms:+.2f} ms)")
    per_call: dict[str, dict[str, list[float]]] = {}
    filtered = sandbox.wrap([sys.executable, "-c", PER_CALL], fn)
    for sample in range(max(4, samples // 6)):
        pair = [("with", filtered), ("without", without_filter(filtered))]
        for kind, argv in pair if sample % 2 else reversed(pair):
            with seccomp.passed_to(argv) as (command, fds):
                out = subprocess.run(command, cwd=fn.directory, pass_fds=fds, check=True,
                                     capture_output=True, text=True).stdout
            for line in out.splitlines():
                name, ns = line.split()
                per_call.setdefault(name, {}).setdefault(kind, []).append(float(ns))
    for name, kinds in per_call.items():
        with_ns, without_ns = (statistics.median(kinds[k]) for k in ("with", "without"))
        print(f"{name:16} CPU  with the filter {with_ns:6.0f} ns, without {without_ns:6.0f} ns "
              f"per call from Python (difference {with_ns - without_ns:+.0f} ns)")


if __name__ == "__main__":
    main()
