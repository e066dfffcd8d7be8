"""Several hosts on one machine: each in a network namespace of its own, on a private subnet.

Issue 16's cluster tests need real network boundaries (a host that is cut off, killed, or
refused) without real machines. A `Network` makes n namespaces and wires them like this:

    root namespace                 bridge namespace               host namespaces
    st<pid>-<k>  10.213.X.1  <-veth->  root ┐
                                       h0 ──┼─ br0  <-veth->  eth0 10.213.X.10  (sora-t<pid>-0)
                                       h1 ──┘       <-veth->  eth0 10.213.X.11  (sora-t<pid>-1)

Why a bridge in a namespace of its own, rather than veths straight to the root namespace or a
bridge in it: hosts must reach each other, and with plain veths that takes routing in the root
namespace (net.ipv4.ip_forward, a machine-wide setting); a bridge in the root namespace would be
subject to the root namespace's firewall for bridged traffic (br_netfilter, Docker's FORWARD
DROP) and would leave a bridge on the machine if a run is killed. In its own namespace the
bridge sees no firewall, the root namespace gets a single veth end (so the main host's
supervisor can run there, keep its gateway on 127.0.0.1 and still reach every host), and
deleting the namespaces deletes every link: nothing survives teardown but what a killed run
left, which the next run sweeps (names carry the pid of the run that made them).

Commands enter a host with `nsenter --net=/run/netns/NAME`, not `ip netns exec`: the latter
also makes a mount namespace and remounts /sys, which hides /sys/fs/cgroup, and Sora's workers
need their cgroups. Only traffic to the hosts' addresses and loopback is sent.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.support import free_port_pair

PREFIX = "sora-t"            # namespaces: sora-t<pid>-<i> (hosts), sora-t<pid>-br<k> (bridges)
ROOT_LINK = re.compile(r"^st(\d+)-(\d+)$")   # the root namespace's veth end: st<pid>-<k>
NAMESPACE = re.compile(r"^sora-t(\d+)-")
SUBNETS = ipaddress.ip_network("10.213.0.0/16")  # unused here (`ip -4 addr`: 127/8, 192.0.2/24)
LOCK = Path("/run/sora-netns.lock")   # several test runs at once pick distinct subnets
FIRST_HOST = 10               # host i gets .10+i; the root namespace .1

_counter = itertools.count()


class NetnsUnavailable(Exception):
    """The kernel (or our privileges) will not let us make network namespaces."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def root_links() -> list[str]:
    out = ip("-o", "link", "show").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def leftovers(pid: int | None = None) -> list[str]:
    """Namespaces and root links this harness made (those of run `pid`, or of any run)."""
    found = []
    for name in namespaces():
        m = NAMESPACE.match(name)
        if m and (pid is None or int(m.group(1)) == pid):
            found.append(f"netns {name}")
    for link in root_links():
        m = ROOT_LINK.match(link)
        if m and (pid is None or int(m.group(1)) == pid):
            found.append(f"link {link}")
    return found


def sweep_dead_runs() -> list[str]:
    """Remove what runs that were killed before their teardown left; a run still alive (another
    test session at the same time) keeps its own."""
    swept = []
    for name in namespaces():
        m = NAMESPACE.match(name)
        if m and not psutil.pid_exists(int(m.group(1))):
            kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
            swept.append(name)
    for link in root_links():
        m = ROOT_LINK.match(link)
        if m and not psutil.pid_exists(int(m.group(1))):
            ip("link", "del", link, check=False)
            swept.append(link)
    return swept


def check_available() -> None:
    """Raise NetnsUnavailable (with the kernel's reason) where namespaces cannot be made."""
    probe = f"{PREFIX}{os.getpid()}-probe"
    done = ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {done.stderr.strip()}")
    ip("netns", "del", probe, check=False)


def namespace_pids(name: str) -> list[int]:
    done = ip("netns", "pids", name, check=False)
    return [int(p) for p in done.stdout.split()]


def kill_namespace_processes(name: str, timeout: float = 10.0) -> None:
    procs = []
    for pid in namespace_pids(name):
        try:
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)


class NetemUnavailable(Exception):
    """The kernel has no netem qdisc (sch_netem), as on this CI machine."""


class _SubnetLease:
    """A /24 of SUBNETS that no interface of the root namespace uses, held under a file lock
    while the root veth end takes its address, so two runs never pick the same one."""

    @staticmethod
    def take(configure) -> ipaddress.IPv4Network:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show").stdout
            for subnet in SUBNETS.subnets(new_prefix=24):
                stem = re.escape(str(subnet.network_address).rsplit(".", 1)[0] + ".")
                if not re.search(rf"(?<![\d.]){stem}", used):
                    configure(subnet)
                    return subnet
        raise RuntimeError(f"no free /24 left in {SUBNETS}")


class Host:
    """One namespace with one address: what a machine of the cluster would be."""

    def __init__(self, network: "Network", index: int, name: str, address: str, port: str):
        self.network, self.index, self.name, self.address = network, index, name, address
        self.port = port      # its veth end in the bridge namespace: down = cable cut
        self.sora_hosts: list = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"

    @property
    def prefix(self) -> list[str]:
        """Put before a command to run it in this host's network (and only its network)."""
        return ["nsenter", f"--net=/run/netns/{self.name}", "--"]

    def run(self, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 30)
        return subprocess.run([*self.prefix, *cmd], **kwargs)

    def popen(self, *cmd: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix, *cmd], **kwargs)

    def python(self, code: str, **kwargs) -> subprocess.Popen:
        """A Python of the test's interpreter running `code` in this host."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        return self.popen(sys.executable, "-c", code, **kwargs)

    def sora(self, base: Path, function_dirs: list, **kwargs):
        """A SoraHost (tests/support.py) whose supervisor runs in this host, with its gateway
        bound to the host's address and a state dir under `base`; stopped at teardown if the
        test has not."""
        from tests.support import SoraHost
        kwargs.setdefault("https", False)
        base.mkdir(parents=True, exist_ok=True)
        host = SoraHost(base, function_dirs, prefix=self.prefix, address=self.address, **kwargs)
        self.sora_hosts.append(host)
        return host

    def cut(self, keep_carrier: bool = False) -> None:
        """Unplug the cable: its bridge port goes down, so packets to and from it are dropped
        silently (no RST, no ICMP), as when a machine drops off the network; the host sees
        its link lose carrier. With keep_carrier, the port is disabled in the bridge instead:
        frames are still dropped but the host's link stays up, as when a switch further
        away fails. (This kernel has no netem or tc drop action, so loss is all or nothing.)"""
        if keep_carrier:
            self._port_state("disabled")
        else:
            ip("link", "set", self.port, "down", netns=self.network.bridge)

    def restore(self) -> None:
        ip("link", "set", self.port, "up", netns=self.network.bridge)
        self._port_state("forwarding")

    def _port_state(self, state: str) -> None:
        # `bridge link set ... state`, not `ip link set ... type bridge_slave state`: the
        # latter exits 0 here and leaves the state as it was.
        subprocess.run(["bridge", "-n", self.network.bridge, "link", "set", "dev", self.port,
                        "state", state], check=True, capture_output=True)

    def netem(self, spec: str | None) -> None:
        """Degrade its link both ways with netem (e.g. "delay 50ms", "loss 10%"), or clear it
        with None. Raises NetemUnavailable where the kernel has no netem."""
        for netns, dev in ((self.network.bridge, self.port), (self.name, "eth0")):
            # Deleting a qdisc that is not there fails; that is fine.
            subprocess.run(["tc", "-n", netns, "qdisc", "del", "dev", dev, "root"],
                           capture_output=True)
            if spec:
                done = subprocess.run(["tc", "-n", netns, "qdisc", "add", "dev", dev, "root",
                                       "netem", *spec.split()], capture_output=True, text=True)
                if "unknown" in done.stderr:
                    raise NetemUnavailable(done.stderr.strip())
                if done.returncode != 0:
                    raise RuntimeError(f"tc netem {spec}: {done.stderr.strip()}")

    def pids(self) -> list[int]:
        """Processes in this host's network namespace (a sandboxed function in a namespace of
        its own is not among them: see kill9)."""
        return namespace_pids(self.name)

    def kill9(self) -> None:
        """SIGKILL every process of this host at once, as a power cut would: each supervisor
        tree started with sora() and anything else in its namespace."""
        procs = []
        for sora in self.sora_hosts:
            if sora.proc is not None and sora.proc.poll() is None:
                procs += [psutil.Process(sora.proc.pid), *sora.descendants()]
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
        for sora in self.sora_hosts:
            if sora.proc is not None:
                sora.proc.wait(10)
                sora._log.close()


class Network:
    """n hosts on one bridge, plus the root namespace at `root_address`."""

    def __init__(self, n: int):
        run = os.getpid()
        k = next(_counter)
        self.bridge = f"{PREFIX}{run}-br{k}"
        self.root_link = f"st{run}-{k}"
        self.hosts: list[Host] = []
        self.root_soras: list = []
        self.subnet = self.root_address = None
        try:
            self._build(run, k, n)
        except BaseException:
            self.teardown()
            raise

    def _build(self, run: int, k: int, n: int) -> None:
        ip("netns", "add", self.bridge)
        ip("link", "set", "lo", "up", netns=self.bridge)
        ip("link", "add", "br0", "type", "bridge", netns=self.bridge)
        ip("link", "set", "br0", "up", netns=self.bridge)
        # The root namespace's end: made in the bridge namespace, then its peer moved out.
        ip("link", "add", "root", "type", "veth", "peer", "name", self.root_link,
           netns=self.bridge)
        ip("link", "set", self.root_link, "netns", "1", netns=self.bridge)
        ip("link", "set", "root", "master", "br0", "up", netns=self.bridge)

        def configure(subnet):
            ip("addr", "add", f"{subnet[1]}/24", "dev", self.root_link)
            ip("link", "set", self.root_link, "up")
        self.subnet = _SubnetLease.take(configure)
        self.root_address = str(self.subnet[1])
        for i in range(n):
            self.add_host()

    def add_host(self) -> Host:
        i = len(self.hosts)
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        port = f"h{i}"
        address = str(self.subnet[FIRST_HOST + i])
        ip("netns", "add", name)
        host = Host(self, i, name, address, port)
        self.hosts.append(host)
        ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name,
           netns=self.bridge)
        ip("link", "set", port, "master", "br0", "up", netns=self.bridge)
        ip("addr", "add", f"{address}/24", "dev", "eth0", netns=name)
        ip("link", "set", "eth0", "up", netns=name)
        return host

    def root_sora(self, base: Path, function_dirs: list, **kwargs):
        """The main host: a SoraHost (tests/support.py) in the root namespace, gateway on
        127.0.0.1 as in every other test; it reaches the hosts, and they reach it at
        `root_address` (e.g. `cluster.listen: tcp://<root_address>:PORT` in `extra`).
        Stopped at teardown if the test has not."""
        from tests.support import SoraHost
        kwargs.setdefault("https", False)
        base.mkdir(parents=True, exist_ok=True)
        host = SoraHost(base, function_dirs, **kwargs)
        self.root_soras.append(host)
        return host

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self):
        return iter(self.hosts)

    def teardown(self) -> list[str]:
        """Stop every supervisor (SIGTERM, then SIGKILL), kill what else runs in the hosts,
        delete the namespaces (which deletes their veths, the bridge and the root's veth end);
        returns what could not be removed."""
        for host in [None, *self.hosts]:
            for sora in (host.sora_hosts if host else self.root_soras):
                if sora.proc is not None and sora.proc.poll() is None:
                    try:
                        sora.stop()
                    except AssertionError:
                        pass    # it was SIGKILLed by stop(); the test reports its own failure
            if host is None:
                continue
            kill_namespace_processes(host.name)
            ip("netns", "del", host.name, check=False)
        ip("netns", "del", self.bridge, check=False)
        # Deleting a namespace frees its links asynchronously; wait for the root's end.
        deadline = time.monotonic() + 10
        while self.root_link in root_links() and time.monotonic() < deadline:
            time.sleep(0.05)
        ip("link", "del", self.root_link, check=False)
        names = {h.name for h in self.hosts} | {self.bridge}
        return [f"netns {n}" for n in namespaces() if n in names] + \
            [f"link {self.root_link}" for _ in [0] if self.root_link in root_links()]


def sora_cli(*args: str) -> str:
    """Run the `sora` CLI as an operator would (here: `sora keys ...`); its output, or
    RuntimeError with what it said."""
    done = subprocess.run([sys.executable, "-m", "sora.cli.main", *args], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"sora {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def served_by(health: dict) -> dict[str, set[str]]:
    """/healthz `hosts` as {host name: names of the functions it serves}, for the hosts that
    are joined (a lost host, still listed with state "lost", is left out). Accepts the shapes
    the control plane has had: {name: {"state", "functions": {function: load}}}, {name:
    [function, ...]} and [{"name": ..., "functions": ...}]."""
    hosts = health.get("hosts") or {}
    if isinstance(hosts, list):
        hosts = {h.get("name"): h for h in hosts if isinstance(h, dict)}
    out = {}
    for name, info in hosts.items():
        if isinstance(info, dict) and info.get("state", "joined") != "joined":
            continue
        functions = info.get("functions", []) if isinstance(info, dict) else info
        out[name] = set(functions or [])
    return out


def host_state(health: dict, name: str) -> str | None:
    """A host's state in /healthz `hosts` ("joined", "lost"), None when it is not listed."""
    info = (health.get("hosts") or {}).get(name)
    return info.get("state", "joined") if isinstance(info, dict) else \
        ("joined" if info is not None else None)


class Cluster:
    """Sora on several hosts of a Network: a main host in the root namespace (`cluster.listen`
    on the root's bridge address) and hosts that join it from their namespaces
    (`sora-supervisor join`, `cluster.controlPlane` = that address, `advertise` = their own).
    Keys are made as an operator makes them: `sora keys init` on every host, each joined
    host's certificate added on the main host with `sora keys add`, and the main host's on
    each joined host. A process reads its allow-list when it starts, so every joined host is
    declared (`add`) before the main host starts; a host declared with allowed=False has keys
    the main host was never given (it must be refused).

    Used by tests/integration/test_cluster.py and bench/hosts.py."""

    MAIN = "main"

    def __init__(self, network: Network, base: Path):
        self.network, self.base = network, Path(base)
        self.port = free_port_pair(network.root_address)
        self.control_plane = f"tcp://{network.root_address}:{self.port}"
        self.main_keys = self._keys(self.MAIN)
        self.main = None
        self.joined: dict[str, object] = {}      # name -> SoraHost (command join)
        self.host_of: dict[str, Host] = {}       # name -> the namespace it runs in

    def _keys(self, name: str) -> Path:
        keys = self.base / name / "keys"
        keys.parent.mkdir(parents=True, exist_ok=True)
        sora_cli("keys", "init", str(keys))
        return keys

    def make_main(self, function_dirs: list, **kwargs):
        """The main host's SoraHost (not started): gateway on 127.0.0.1, joins on
        `control_plane`."""
        extra = dict(kwargs.pop("extra", {}) or {})
        extra["cluster"] = {"listen": self.control_plane, "keys": str(self.main_keys),
                            "name": self.MAIN}
        self.main = self.network.root_sora(self.base / self.MAIN, function_dirs, extra=extra,
                                           **kwargs)
        return self.main

    def add(self, host: Host, name: str, function_dirs: list, allowed: bool = True, **kwargs):
        """A joined host's SoraHost (not started) in `host`, named `name` in the cluster."""
        keys = self._keys(name)
        sora_cli("keys", "add", str(keys), str(self.main_keys / "host.key"), "--name",
                 self.MAIN)
        if allowed:
            sora_cli("keys", "add", str(self.main_keys), str(keys / "host.key"), "--name", name)
        extra = dict(kwargs.pop("extra", {}) or {})
        extra["cluster"] = {"controlPlane": self.control_plane, "advertise": host.address,
                            "keys": str(keys), "name": name, "controlPlaneKey": self.MAIN}
        sora = host.sora(self.base / name, function_dirs, command="join", extra=extra,
                         **kwargs)
        self.joined[name] = sora
        self.host_of[name] = host
        return sora

    def serving(self, name: str, functions=()) -> bool:
        """Whether the main host's /healthz lists the joined host `name` serving all of
        `functions` (at least one function when none are named)."""
        served = served_by(self.main.health()).get(name)
        return bool(served) and set(functions) <= served

    def joins(self, name: str) -> int:
        """How often the main host has logged joined host `name` joining."""
        return self.main.log(whole=True).count(f"host {name} joined from ")

    def start_joined(self, name: str, functions=(), timeout: float = 90):
        """Start (or start again) joined host `name`; ready once the main host has logged it
        joining (again) and lists it serving `functions`. (A host started again before the
        main host noticed it was gone is still listed from before: its join is the sign.)"""
        sora = self.joined[name]
        if sora.proc is not None:
            sora = self.joined[name] = sora.restarted()
            host = self.host_of[name]
            host.sora_hosts.append(sora)
        before = self.joins(name)
        return sora.start(ready=lambda: self.joins(name) > before
                          and self.serving(name, functions), timeout=timeout)

    def restart_main(self, wait_functions=None, timeout: float = 90):
        """Start the main host again on its config and state dir (after kill9 or stop)."""
        self.main = self.main.restarted()
        self.network.root_soras.append(self.main)
        return self.main.start(wait_functions, timeout=timeout)


def skippable(exc: NetnsUnavailable) -> bool:
    """Whether the failure is the kernel or our privileges refusing (skip), not a bug (fail)."""
    text = str(exc)
    return any(word in text for word in ("Operation not permitted", "Permission denied",
                                         "not supported", os.strerror(errno.EPERM),
                                         "Invalid argument", "No such file"))


__all__ = ["Network", "Host", "Cluster", "NetnsUnavailable", "NetemUnavailable",
           "check_available", "sweep_dead_runs", "leftovers", "skippable", "served_by",
           "host_state", "sora_cli"]
