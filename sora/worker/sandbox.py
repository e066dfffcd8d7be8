"""The sandbox of an instance (`isolation: sandbox` in sora.yaml), with bubblewrap.

An instance's command line is wrapped so that it runs:
- in its own mount namespace with the system read-only (`/usr`, `/lib*`, `/bin`, `/sbin`,
  `/etc`), its function folder read-only, the interpreter and Sora's runtime shims read-only,
  its secrets folder read-only, a private writable `/tmp` of `tmpSize` MB, and nothing else:
  not the other functions' folders, the state dir, the host config, certificates or keys;
- in its own pid namespace with its own `/proc` (it sees only its own processes), IPC and UTS
  namespaces, and with `network: false` its own network namespace (loopback only);
- as an unprivileged uid/gid of its own (61000 + a hash of the function's name), with no
  capabilities and no_new_privs, even when Sora runs as root: bubblewrap makes the mounts as
  root, then `setpriv` drops to that uid before the runtime starts.

It starts once per instance (a warm invocation pays nothing for it). bubblewrap creates the
folders above a bind as 0700 when it runs as root, so each is made 0755 first.
"""
from __future__ import annotations

import os
import shutil
import sys
import zlib

import sora

from ..config import FunctionConfig

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")
UID_BASE, UID_RANGE = 61000, 4000


def available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("setpriv") is not None


def sandbox_uid(function: str) -> int:
    """The function's own unprivileged uid (and gid): stable across restarts."""
    return UID_BASE + zlib.crc32(function.encode()) % UID_RANGE


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _prefix_of(executable: str) -> str | None:
    """The installation folder of an interpreter (`<prefix>/bin/python` -> `<prefix>`)."""
    real = os.path.realpath(executable)
    parent = os.path.dirname(os.path.dirname(real))
    return parent if parent not in ("/", "") else os.path.dirname(real)


def read_only_paths(argv: list[str]) -> list[str]:
    """What an instance needs to read besides the system and its folder: its interpreter's
    installation, Sora's runtime shims, and Sora's own Python (the `provided` adapter runs on
    it). None of these hold anything of the host's or another function's."""
    paths = [_prefix_of(argv[0]), os.path.dirname(os.path.abspath(sora.__file__)),
             sys.prefix, sys.base_prefix]
    if os.path.islink(argv[0]):
        paths.append(os.path.dirname(os.path.abspath(argv[0])))
    out = []
    for path in paths:
        if path and os.path.exists(path) and not _under(path, SYSTEM_DIRS) and path not in out:
            out.append(path)   # as named (bubblewrap follows a symlink to bind its target)
    return out


def wrap(argv: list[str], fn: FunctionConfig, secrets_dir: str | None = None) -> list[str]:
    uid = sandbox_uid(fn.name)
    binds = [(p, p) for p in read_only_paths(argv)]
    binds.append((fn.directory, fn.directory))
    if secrets_dir:
        binds.append((secrets_dir, secrets_dir))
    # No --new-session: the sandbox stays in the instance's process group, killed as one (its
    # stdio are pipes, not a terminal, so there is no terminal to inject keystrokes into).
    cmd = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try"]
    if not fn.network:
        cmd.append("--unshare-net")
    for path in SYSTEM_DIRS:
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--size", str(fn.tmpSize * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"]
    made = {"/tmp", "/dev", "/proc"}
    for _, dest in sorted(binds, key=lambda b: b[1].count("/")):
        parent = os.path.dirname(dest)
        chain = []
        while parent not in ("/", "") and parent not in made and \
                not _under(parent, SYSTEM_DIRS):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            cmd += ["--perms", "0755", "--dir", folder]
            made.add(folder)
    for source, dest in binds:
        cmd += ["--ro-bind", source, dest]
    cmd += ["--chdir", fn.directory, "--setenv", "HOME", "/tmp", "--",
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            "--bounding-set=-all", "--inh-caps=-all", "--"]
    return cmd + argv
