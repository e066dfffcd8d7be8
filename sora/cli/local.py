"""`sora invoke --local DIR`: run a function once, without a host, through the same code.

It runs what a host runs for one function: its `setup` (cached like the host's), the control
plane (`sora.control.plane`), one real worker process with its runtime instance, and the
gateway's invocation client (which sends the call straight to the worker), then stops them all. Only the supervisor's restarts, the gateways and
the records are left out. State (setup cache, sockets, the function's log) is kept per function
folder under $XDG_CACHE_HOME/sora/local/ so setup is skipped on the next run.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import queue
import signal
import subprocess
import sys
import time

from .. import config_snapshot
from .. import protocol as p
from ..config import ConfigError, FunctionConfig, load_function_config
from ..isolation.secrets import declared_env_names
from ..control.plane import ControlPlane
from ..messaging.client import BROKER_SLACK, BrokerTimeout, InvocationClient
from ..parent_death import die_with_parent
from ..setup.run import SetupRun
from .host import CliError

READY_TIMEOUT = 60.0


def state_dir_for(directory: str) -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.path.abspath(directory).encode()).hexdigest()[:16]
    return os.path.join(cache, "sora", "local", digest)


def _setup(fn: FunctionConfig, state_dir: str) -> None:
    run = SetupRun(fn, state_dir, withheld=declared_env_names([fn]))
    run.start()
    if run.outcome is None:
        print(f"sora: running setup of {fn.name} ({len(fn.setup)} command(s))...",
              file=sys.stderr)
    while (outcome := run.poll()) is None:
        time.sleep(0.1)  # the setup command's own deadline (setupTimeout) bounds this
    if not outcome.ok:
        raise CliError(f"{fn.name}: {outcome.reason}")


def _wait_ready(plane: ControlPlane, worker: subprocess.Popen, fn: FunctionConfig,
                state_dir: str) -> None:
    deadline = time.monotonic() + max(READY_TIMEOUT, fn.timeout)
    while time.monotonic() < deadline:
        try:
            event, _ = plane.events.get(timeout=0.1)
            if event == "ready":
                return
        except queue.Empty:
            pass
        code = worker.poll()
        if code is not None:
            reason = p.take_boot_error(state_dir, fn.name) or \
                f"its worker exited with status {code} (log: {_worker_log(state_dir)})"
            raise CliError(f"{fn.name}: the function cannot start: {reason}")
    raise CliError(f"{fn.name}: the function was not ready after {READY_TIMEOUT:.0f}s")


def _worker_log(state_dir: str) -> str:
    return os.path.join(state_dir, "worker.log")


def invoke_local(directory: str, payload: bytes) -> tuple[bytes, bytes, bytes]:
    """Run the function in `directory` once: (status, body, base64 log tail)."""
    try:
        fn = load_function_config(directory)
    except ConfigError as exc:
        raise CliError(f"configuration error\n{exc}", exit_code=2) from None
    state_dir = state_dir_for(fn.directory)
    p.make_run_dir(state_dir)
    with open(os.path.join(p.run_dir(state_dir), "local.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one local run of a folder at a time: same sockets
        # The worker gets the config read above, before setup, as a host's workers do.
        snapshot = config_snapshot.snapshot_path(state_dir)
        config_snapshot.write(snapshot, [fn], [])
        _setup(fn, state_dir)
        plane = ControlPlane(p.control_endpoint(state_dir))
        plane.start()
        plane.control.set_functions({fn.name: {"maxQueued": 1, "maxWait": fn.timeout,
                                               "available": True, "reason": ""}})
        with open(_worker_log(state_dir), "ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "sora.worker", "--name", fn.name, "--functions",
                 snapshot, "--state-dir", state_dir, "--control", p.control_endpoint(state_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True, preexec_fn=die_with_parent)
        try:
            _wait_ready(plane, worker, fn, state_dir)
            return asyncio.run(_invoke(fn, state_dir, payload))
        finally:
            _stop(worker)
            plane.control.stop()
            plane.join(timeout=5)
            plane.control.close()


async def _invoke(fn: FunctionConfig, state_dir: str, payload: bytes):
    # No records sender: a local run has no recorder.
    client = InvocationClient(p.control_endpoint(state_dir), state_dir=None)
    request_id = f"local-{os.urandom(8).hex()}"
    try:
        status, body, *tail = await client.invoke(
            fn.name, request_id.encode(), payload, fn.timeout * 2 + BROKER_SLACK,
            p.meta(p.TRIGGER_INVOKE, tail=True))
        return status, body, (tail or [b""])[0]
    except BrokerTimeout:
        raise CliError(f"{fn.name}: no answer from its worker in time") from None
    finally:
        client.close()


def _stop(worker: subprocess.Popen) -> None:
    # Nothing is left to keep once the answer is in (a graceful stop would only wait for its
    # records to reach a recorder that a local run does not have): the worker's process group
    # goes at once, and its runtime instance with it (it dies with its parent).
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    worker.wait()
