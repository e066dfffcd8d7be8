"""Load a function's module once, the way an instance would, and say whether it loads.

`sora validate` and `sora-supervisor check` use this so that a syntax error or a handler the
module does not export is reported before the host serves, not only when its worker starts.
The instance is the real one: the function's runtime (`Runtime.argv`, `Runtime.environment`),
in its sandbox when it has one, in its folder with what setup left there. It gets no request:
its bootstrap loads the module and answers `READY` or `INIT <error>` on its control fd (the
error's message names the file, line and column, relative to the function folder), then it and
everything it started are killed as one process group.

What the check cannot reproduce is reported as "not checked" rather than as broken: a
`provided` function (its bootstrap is the function's own executable), a host without the
sandbox, and any load error other than a syntax error or a missing handler while the check
lacks what an instance would have (setup has not run on the folder as it is, so dependencies
may be missing; the function's secrets, which the check does not read).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass

from ..config import ConfigError, FunctionConfig
from ..isolation import sandbox
from ..parent_death import die_with_parent
from ..setup.run import setup_ran
from . import runtime_for

# The worker gives booting instances at least this long (sora.worker.main.Worker.boot).
LOAD_TIMEOUT = 30.0
# Errors that depend on the code alone, whatever setup or secrets would add.
CODE_ERRORS = ("Runtime.UserCodeSyntaxError", "Runtime.HandlerNotFound")
# What is kept of the instance's stderr, to explain an exit without an INIT error.
STDERR_KEPT = 2000


@dataclass(frozen=True)
class LoadResult:
    loaded: bool | None   # True: it loads; False: it fails as an instance would; None: unchecked
    reason: str = ""      # why it failed, or why it was not checked

    @property
    def broken(self) -> bool:
        return self.loaded is False


def check_functions(functions: list[FunctionConfig],
                    state_dir: str | None) -> list[tuple[FunctionConfig, LoadResult]]:
    """Each function's module loaded as its instances would load it on this host (`state_dir`:
    the host's, where setup records what it ran; None for a function folder on its own)."""
    return [(fn, check_load(fn, setup_ran(fn, state_dir))) for fn in functions]


def check_load(fn: FunctionConfig, setup_ran: bool, timeout: float = LOAD_TIMEOUT) -> LoadResult:
    """Load `fn`'s module as an instance would. `setup_ran`: its setup has run on the folder
    as it is now (or it has none), so what the instances load is there."""
    if fn.language == "provided":
        return LoadResult(None, "not loaded: a provided function's bootstrap is its own "
                                "executable, started only by its worker")
    complete = setup_ran and not fn.secrets
    runtime = runtime_for(fn.language)
    try:
        runtime.prepare(fn)
    except ConfigError as exc:
        if not setup_ran:
            return LoadResult(None, f"not loaded: setup has not run yet ({exc.problems[0]})")
        return LoadResult(False, str(exc))
    argv = runtime.argv(fn)
    env = runtime.environment(fn)
    env["AWS_LAMBDA_LOG_STREAM_NAME"] = "sora-load-check"
    if fn.sandboxed:
        if (reason := sandbox.unavailable_reason()) is not None:
            return LoadResult(None, f"not loaded: isolation: {reason}")
        if (reason := sandbox.interpreter_problem(argv, fn.directory)) is not None:
            return LoadResult(False, f"{fn.source}: runtime: {reason}")
        argv = sandbox.wrap(argv, fn)
        env["HOME"] = "/tmp"   # as an instance's (the host's home is not in the sandbox)
        env = sandbox.without_loader_variables(env, fn)   # set inside it (LOADER_ENV)
    outcome = _run(argv, env, fn.directory, timeout)
    if outcome is None:
        return LoadResult(True)
    error_type, message = outcome
    reason = f"{fn.source}: cannot load {fn.entrypoint}: {error_type}: {message}"
    if error_type in CODE_ERRORS or complete:
        return LoadResult(False, reason)
    missing = "setup has not run on the folder as it is yet; without it" if not setup_ran \
        else "its secrets are not given to the check; without them"
    first_line = message.splitlines()[0] if message else ""
    return LoadResult(None, f"{missing}: {error_type}: {first_line}")


def _run(argv: list[str], env: dict[str, str], cwd: str,
         timeout: float) -> tuple[str, str] | None:
    """Start the instance and wait for its first answer: None if `READY`, else (errorType,
    errorMessage). The process group is killed whatever happens."""
    read_fd, write_fd = os.pipe()
    env = {**env, "SORA_CONTROL_FD": str(write_fd)}
    try:
        with sandbox.passed_to(argv) as (command, filter_fds):
            proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    pass_fds=(write_fd, *filter_fds), start_new_session=True,
                                    preexec_fn=die_with_parent)
    except OSError as exc:
        os.close(read_fd)
        return "Runtime.ExitError", f"the runtime could not start: {exc.strerror or exc}"
    finally:
        os.close(write_fd)
    control, stderr = b"", b""
    deadline = time.monotonic() + timeout
    open_fds = {read_fd, proc.stderr.fileno()}
    try:
        while b"\n" not in control and read_fd in open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                return "Runtime.InitTimeout", f"the module did not load within {timeout:g}s"
            ready, _, _ = select.select(list(open_fds), [], [], left)
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                elif fd == read_fd:
                    control += chunk
                else:
                    stderr = (stderr + chunk)[-STDERR_KEPT:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = proc.wait()
        proc.stderr.close()
        os.close(read_fd)
    line = control.partition(b"\n")[0]
    if line == b"READY":
        return None
    if line.startswith(b"INIT "):
        try:
            error = json.loads(line[5:])
            return str(error.get("errorType") or "Error"), str(error.get("errorMessage") or "")
        except (ValueError, AttributeError):
            pass
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return "Runtime.ExitError", f"the runtime exited with status {code} before it was ready " \
                                f"({last[0][:300]})"
