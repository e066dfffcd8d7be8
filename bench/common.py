"""What the benchmarks share: free ports, wrk runs and their parsing, medians, and starting the
plain Node server, serverless-offline (bench/peer/) and a Sora host on free loopback ports."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, connections: int, duration: int, threads: int,
        script: str | None = None) -> dict:
    """One wrk run; `script` is a wrk Lua file (for POST requests with headers)."""
    extra = ["-s", script] if script else []
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s",
                          "--latency", *extra, url], capture_output=True, text=True,
                         check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _ms(m.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result["non_2xx"] = int(bad.group(1)) if bad else 0
    result["socket_errors"] = errors.group(1) if errors else ""
    return result


def measure(name: str, url: str, duration: int, reading=None) -> dict:
    """p50/p99 at concurrency 1, then requests per second at 64; `reading`: a function whose
    results just before and after the c=64 run go in the row (`readings`, e.g. CPU times)."""
    c1 = wrk(url, 1, duration, 1)
    before = reading() if reading else None
    c64 = wrk(url, 64, duration, 2)
    row = {"target": name, "p50_ms": c1["p50_ms"], "p99_ms": c1["p99_ms"], "rps_c64": c64["rps"],
           "errors": c64["non_2xx"] + c1["non_2xx"], "socket_errors": c64["socket_errors"],
           "requests_c64": c64["requests"]}
    if reading:
        row["readings"] = (before, reading())
    print(f"  {name:<12} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
          f"{row['rps_c64']:>9.0f} req/s at c=64  errors {row['errors']}", flush=True)
    return row


PEER = ROOT / "bench" / "peer"
PEER_ENV = {"SLS_TELEMETRY_DISABLED": "1", "SLS_NOTIFICATIONS_MODE": "off",
            "SLS_DEPRECATION_DISABLE": "*", "SERVERLESS_PLATFORM_VENDOR": "aws"}


def peer_binary() -> Path | None:
    """bench/peer's `serverless`, installed with npm the first time; None (said why) if that
    failed."""
    binary = PEER / "node_modules" / ".bin" / "serverless"
    if not binary.exists():
        print("installing serverless-offline for the peer measurement (npm)...", flush=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=PEER,
                              capture_output=True, text=True)
        if done.returncode != 0 or not binary.exists():
            print(f"peer skipped: npm install failed:\n{done.stderr[-2000:]}", flush=True)
            return None
    return binary


def start_peer(port: int, lambda_port: int | None = None) -> subprocess.Popen | None:
    """serverless-offline on the same handler, or None (with a reason) if it cannot run; its
    Lambda Invoke API listens on `lambda_port`."""
    binary = peer_binary()
    if binary is None:
        return None
    return subprocess.Popen([str(binary), "offline", "start", "--httpPort", str(port),
                             "--lambdaPort", str(lambda_port or free_port())], cwd=PEER,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=dict(os.environ, **PEER_ENV))


def median(name: str, results: list[dict]) -> dict:
    def mid(key):
        values = sorted(r[key] for r in results)
        return values[len(values) // 2]
    return {"target": name, "p50_ms": mid("p50_ms"), "p99_ms": mid("p99_ms"),
            "rps_c64": mid("rps_c64"), "errors": sum(r["errors"] for r in results)}


def start_node(port: int) -> subprocess.Popen:
    return subprocess.Popen(["node", str(ROOT / "bench" / "plain_node_server.js"), str(port),
                             str(HELLO / "index.js")], start_new_session=True,
                            env=dict(os.environ, GREETING="Hello"))


def start_host(tmp: Path, port: int, gateway_workers: int,
               function_dirs: list[Path], python: str = sys.executable,
               options: list[str] | None = None,
               extra: dict | None = None) -> subprocess.Popen:
    """A Sora host serving the given function folders on a free port; `python` may be another
    revision's interpreter (`export_revision`); `options` go to `sora-supervisor start`
    (`--watch`); `extra`: more host-config.yaml settings (`records: {...}`)."""
    config = tmp / "host-config.yaml"
    config.write_text(json.dumps({
        "functionPaths": [str(d) for d in function_dirs],
        "server": {"httpPort": port, "bind": "127.0.0.1", "gatewayWorkers": gateway_workers},
        "stateDir": str(tmp / "state"), **(extra or {})}))
    log = open(tmp / "supervisor.log", "wb")
    # Started in `tmp`: `python -m` puts the working directory first on sys.path, so started
    # in this checkout every revision's host would run this checkout's `sora`.
    return subprocess.Popen([python, "-m", "sora.supervisor.cli", "start", "--config",
                             str(config), *(options or [])], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=tmp)


def export_revision(revision: str, into: Path) -> str:
    """An interpreter that runs Sora's code at `revision` (any git revision of this checkout):
    the code written out under `into`, and a virtualenv whose path has it first, then this
    virtualenv's packages. (PYTHONPATH would not do: this virtualenv's editable install of Sora
    is found before it.) With `start_host(python=...)` an earlier Sora runs beside this one in
    the same run, so a change is measured before and after under the same machine load."""
    tree = into / "source"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "sora"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    venv = into / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    # A path added by a .pth file is not a site dir, so this virtualenv's own .pth files (its
    # editable install of Sora) are not run there.
    Path(site, "sora-baseline.pth").write_text(f"{tree}\n{ours}\n")
    return str(python)


def copy_function(source: Path, tmp: Path, name: str | None = None, **settings) -> Path:
    """A copy of a function folder, with settings appended to its sora.yaml."""
    fn = tmp / (name or source.name)
    shutil.copytree(source, fn, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    text = (fn / "sora.yaml").read_text()
    if name:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("name:"))
        text += f"\nname: {name}"
    text += "".join(f"\n{key}: {value}" for key, value in settings.items())
    (fn / "sora.yaml").write_text(text + "\n")
    return fn


def start_sora(tmp: Path, port: int, gateway_workers: int, instances: int) -> subprocess.Popen:
    return start_host(tmp, port, gateway_workers,
                      [copy_function(HELLO, tmp, instances=instances)])


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_rounds(urls: dict[str, str], procs: list, rounds: int, duration: int,
               ready_timeout: float = 60.0) -> dict[str, list[dict]]:
    """Warm every target up, then measure them in alternating rounds; stop `procs` at the end
    whatever happens."""
    results: dict[str, list[dict]] = {name: [] for name in urls}
    try:
        for url in urls.values():
            wait_http(url, timeout=ready_timeout)
            wrk(url, 64, 3, 2)  # warm-up: JIT; Sora's worker learns the function is fast
        for i in range(rounds):
            print(f"round {i + 1}/{rounds}", flush=True)
            for name, url in urls.items():
                results[name].append(measure(name, url, duration))
    finally:
        for proc in procs:
            if proc is not None:
                stop(proc)
    return results

