"""Helpers for integration tests: a real `sora-supervisor start` on free ports in a temp dir.

Like circus's tests/support.py: start the real thing, poll for the expected state with a
deadline (never a bare sleep), and on teardown check that nothing was left behind.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import requests
import yaml

from sora.isolation import cgroups

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair(address: str = "127.0.0.1") -> int:
    """A free port p on `address` with p + 1 free too (cluster.listen takes joins on p and
    joined hosts' records on p + 1)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((address, 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind((address, port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError(f"no two consecutive free ports on {address}")


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the predicate may fail until it holds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


def processes_in(folder, name: str | None = None) -> list[psutil.Process]:
    """Live processes working in `folder` (a function's runtime and what it started), as the
    host sees them: a sandboxed function's own pids are those of its pid namespace, so tests
    find its processes this way. bubblewrap itself is left out."""
    found = []
    for proc in psutil.process_iter(["name", "cwd", "status"]):
        info = proc.info
        if info["cwd"] == str(folder) and info["status"] != psutil.STATUS_ZOMBIE and \
                info["name"] != "bwrap" and (name is None or info["name"] == name):
            found.append(proc)
    return found


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def write_function(base: Path, folder: str, files: dict[str, str], **config) -> Path:
    """A function folder with a sora.yaml built from `config` and the given files."""
    directory = base / folder
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(textwrap.dedent(text))
    if config:
        spec = {"language": "nodejs", "entrypoint": "index.js", "handler": "handler",
                "trigger": "http", **config}
        (directory / "sora.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory


def store_setting(store) -> str | dict:
    """host-config.yaml's `store:` for a StoreConfig (or a setting given as it is)."""
    if isinstance(store, (str, dict)):
        return store
    if store.kind == "sqlite":
        return "sqlite"
    return {"url": store.url, "poolSize": store.poolSize}


class SoraHost:
    """A running supervisor with its gateways and workers."""

    def __init__(self, base: Path, function_dirs: list[Path], https: bool = True,
                 server: dict | None = None, env: dict | None = None,
                 extra: dict | None = None, api_key: str | None = None,
                 fresh_connections: bool = False, prefix: list[str] | None = None,
                 address: str = "127.0.0.1", command: str = "start",
                 options: list[str] | None = None, store=None):
        self.base = base
        # A host in a network namespace (tests/netns.py) runs its supervisor under `prefix`
        # (nsenter ...), binds its gateway to `address` and is reached there; `command` is
        # the supervisor's subcommand (`join` for a host that joins a cluster).
        self.prefix = list(prefix or [])
        self.address = address
        self.command = command
        self.options = list(options or [])   # after --config PATH, e.g. ["--watch"]
        self.fresh_connections = fresh_connections
        self.function_dirs = list(function_dirs)
        self.http_port = free_port()
        self.https_port = free_port() if https else None
        server_cfg = {"httpPort": self.http_port, "bind": address, "gatewayWorkers": 1,
                      "gracefulTimeout": 10}
        if https:
            self.cert, key = make_cert(base)
            server_cfg.update(httpsPort=self.https_port, sslCertPath=str(self.cert),
                              sslKeyPath=str(key))
        server_cfg.update(server or {})
        self.config_path = base / "host-config.yaml"
        # `store`: a StoreConfig (the `store_backend` fixture's) or host-config.yaml's mapping.
        self.store = store
        self.config_path.write_text(yaml.safe_dump({
            "functionPaths": [str(d) for d in function_dirs],
            "server": server_cfg,
            "stateDir": str(base / "state"),
            **({"store": store_setting(store)} if store is not None else {}),
            **(extra or {}),
        }))
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.log_path = base / "supervisor.log"
        self.api_key = api_key
        self.session = self._session()

    def _session(self) -> requests.Session:
        session = requests.Session()
        if self.fresh_connections:
            # gunicorn 27's asgi worker now and then closes a reused keep-alive connection
            # with no answer to the large POST sent on it (seen before issue 14 as well: 2 to
            # 13 of 60 bodies of 200-600 KB); suites that send such bodies on purpose open a
            # connection for each request, so they test what they mean to.
            session.headers["Connection"] = "close"
        if self.api_key:
            session.headers["Authorization"] = f"Bearer {self.api_key}"
        return session

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    def start(self, wait_functions: list[str] | None = None, timeout: float = 60,
              ready=None) -> "SoraHost":
        """Start the supervisor and wait until its functions are RUNNING on its own /healthz,
        or, with `ready` (for a host that serves no HTTP, such as one that joins a cluster),
        until ready() is true, e.g. the main host's /healthz lists it."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "sora.supervisor.cli", self.command, "--config",
             str(self.config_path), *self.options], stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)
        try:
            if ready is None:
                self.wait_healthy(wait_functions, timeout)
            else:
                self.wait_ready(ready, timeout)
        except BaseException:   # a failed start (or pytest's timeout) leaves no host running
            self.stop()
            raise
        return self

    def health(self) -> dict:
        return self.session.get(self.url + "/healthz", timeout=5).json()

    def wait_healthy(self, functions: list[str] | None = None, timeout: float = 60) -> dict:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited early:\n{self.log()}")
            h = self.health()
            names = functions if functions is not None else list(h["functions"])
            return h if all(h["functions"].get(n, {}).get("state") == "RUNNING"
                            for n in names) else None
        try:
            return wait_for(ready, timeout, 0.1, "functions to be RUNNING")
        except AssertionError:
            raise AssertionError(f"host not healthy; log:\n{self.log()}") from None

    def wait_ready(self, ready, timeout: float = 60):
        """Poll ready() until it is truthy; fail at once if the supervisor exits."""
        deadline = time.monotonic() + timeout
        last_exc = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited early ({self.proc.returncode}):\n"
                                     f"{self.log()}")
            try:
                value = ready()
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - it may fail until the host is up
                last_exc = exc
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for the host to be ready"
                             + (f" (last error: {last_exc!r})" if last_exc else "")
                             + f"; log:\n{self.log()}")

    def function_state(self, name: str) -> dict:
        return self.health()["functions"][name]

    def kill_worker(self, name: str, timeout: float = 30.0) -> dict:
        """kill -9 the function's worker, then its state once a new worker is RUNNING."""
        worker = self.function_state(name)["pid"]
        os.kill(worker, signal.SIGKILL)
        return wait_for(lambda: (s := self.function_state(name))["state"] == "RUNNING"
                        and s["pid"] != worker and s, timeout=timeout, what="a new worker")

    def invoke(self, name: str, path: str = "", method: str = "GET", **kwargs):
        kwargs.setdefault("timeout", 30)
        return self.session.request(method, f"{self.url}/functions/{name}{path}", **kwargs)

    def record(self, request_id: str, timeout: float = 20.0) -> dict:
        """The invocation's record, once the recorder has stored it."""
        return wait_for(lambda: (r := self.session.get(
            f"{self.url}/api/invocations/{request_id}", timeout=5)).status_code == 200
            and r.json(), timeout, what=f"the record of {request_id}")

    def log(self, whole: bool = False) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if whole else text[-8000:]

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 40) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.session.close()  # idle keep-alive connections would hold up the graceful stop
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"supervisor did not stop in {timeout}s:\n{self.log()}")
        finally:
            self._log.close()

    def kill9(self) -> None:
        """SIGKILL the supervisor and every process under it at once, as a power cut would."""
        procs = [psutil.Process(self.proc.pid), *self.descendants()]
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait()
        psutil.wait_procs(procs, timeout=10)
        self._log.close()

    def restarted(self) -> "SoraHost":
        """A new host object on the same config and state dir, not yet started."""
        twin = SoraHost.__new__(SoraHost)
        twin.__dict__.update(self.__dict__)
        twin.session = twin._session()
        twin.proc = None
        return twin

    def leftovers(self) -> list[str]:
        """Processes and cgroups this host left behind."""
        return self.leftover_processes() + self.leaked_cgroups()

    def leftover_processes(self) -> list[str]:
        """Processes still running that belong to this host (cwd or command line in base)."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(proc.info["cmdline"] or [])
                cwd = proc.info["cwd"] or ""
                if str(self.base) in cmd or cwd.startswith(str(self.base)):
                    found.append(f"{proc.pid} {cmd}")
            except psutil.Error:
                continue
        return found

    def leaked_cgroups(self) -> list[str]:
        """Cgroups of this host's instances and pre-started runtimes whose owner is gone."""
        names = set()
        for d in self.function_dirs:
            spec = d / "sora.yaml"
            if spec.exists():
                names.add((yaml.safe_load(spec.read_text()) or {}).get("name"))
        found = []
        for base in cgroups.group_bases():
            try:
                groups = os.listdir(base)
            except OSError:
                continue
            for group in groups:
                parts = group.rsplit("-", 2)
                mine = parts[0] in names or group.startswith(f"_standby-{self.proc.pid}-")
                if len(parts) == 3 and mine and parts[1].isdigit() and \
                        not psutil.pid_exists(int(parts[1])):
                    found.append(f"cgroup {base}/{group}")
        return found


def served(base: Path, function_dirs: list[Path], **kwargs):
    """For module fixtures, `yield from served(...)`: a started host, then a check that it
    stops cleanly."""
    host = SoraHost(base, function_dirs, **kwargs)
    host.start()
    yield host
    assert host.stop() == 0


def lambda_client(url: str):
    """A real boto3 Lambda client pointed at a Sora host (no retries: each call is one)."""
    import boto3
    from botocore.config import Config
    return boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="sora", aws_secret_access_key="sora",
                        config=Config(retries={"max_attempts": 0}, read_timeout=30))


def json_of(response) -> dict:
    try:
        return response.json()
    except ValueError:
        raise AssertionError(f"not JSON ({response.status_code}): {response.text[:500]}")


__all__ = ["SoraHost", "free_port", "wait_for", "write_function", "make_cert", "json_of",
           "lambda_client", "served", "ROOT", "json"]
