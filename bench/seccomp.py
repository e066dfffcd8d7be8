"""What the sandbox's seccomp filter (sora.isolation.seccomp) costs a cold start.

Starts examples/hello's sandbox (sandbox.wrap, as an instance is started) around a few
commands, with the filter and without it (the same command line less `--seccomp FD`),
alternating the two so that the machine's drift touches both alike, and prints the median
time from spawn to exit of each:
  - `/bin/true`: the sandbox alone (bubblewrap's namespaces and mounts, loading the filter);
  - `python3 -c pass`, `node -e ''`: an interpreter's start, every system call of which now
    passes the filter.
The filter is compiled once per process (seccomp.program(), timed here too); each spawn only
writes it into a pipe. Run as root, as Sora runs (sandbox_uid, setpriv).

    .venv/bin/python bench/seccomp.py [--samples 30]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import HELLO, ROOT

sys.path.insert(0, str(ROOT))
from sora.config import load_function_config   # noqa: E402
from sora.isolation import sandbox, seccomp     # noqa: E402

COMMANDS = {"/bin/true": ["/bin/true"], "python3 -c pass": ["python3", "-c", "pass"],
            "node -e ''": ["node", "-e", ""]}


def without_filter(argv: list[str]) -> list[str]:
    slot = argv.index("--seccomp")
    return argv[:slot] + argv[slot + 2:]


def spawn_ms(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    with seccomp.passed_to(argv) as (command, fds):
        subprocess.run(command, cwd=cwd, pass_fds=fds, check=True, stdin=subprocess.DEVNULL)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    fn = load_function_config(str(HELLO))
    start = time.perf_counter()
    seccomp.program()
    print(f"compiling the filter (once per process, with pyseccomp's import): "
          f"{(time.perf_counter() - start) * 1000:.1f} ms, {len(seccomp.program())} bytes")
    for label, command in COMMANDS.items():
        filtered = sandbox.wrap(command, fn)
        plain = without_filter(filtered)
        times = {"with": [], "without": []}
        for _ in range(args.samples):
            times["with"].append(spawn_ms(filtered, fn.directory))
            times["without"].append(spawn_ms(plain, fn.directory))
        with_ms, without_ms = (statistics.median(times[k]) for k in ("with", "without"))
        print(f"{label:18} with the filter {with_ms:6.2f} ms, without {without_ms:6.2f} ms "
              f"(median of {args.samples}; difference {with_ms - without_ms:+.2f} ms)")


if __name__ == "__main__":
    main()
