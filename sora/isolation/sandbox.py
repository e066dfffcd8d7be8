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
  root, then `setpriv` drops to that uid before the runtime starts. When Sora does not run as
  root, bubblewrap makes the mounts in a user namespace of its own instead, and the function
  keeps Sora's (unprivileged) uid, without capabilities on the host.

It starts once per instance (a warm invocation pays nothing for it). bubblewrap creates the
folders above a bind as 0700 when it runs as root, so each is made 0755 first.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import zlib

import sora

from ..config import FunctionConfig

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")
UID_BASE, UID_RANGE = 61000, 4000


def available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("setpriv") is not None


def unavailable_reason() -> str | None:
    """Why an instance cannot be sandboxed on this host (None when it can): checked once at a
    worker's start, so the function is reported FATAL with the reason, not each instance."""
    if not available():
        return ("expected bubblewrap (bwrap) and setpriv on PATH for 'sandbox' (apt-get install "
                "bubblewrap), or isolation: none")
    if os.geteuid() == 0:
        return None
    try:
        probe = subprocess.run(["bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'sandbox' could not start bubblewrap ({exc}); or isolation: none"
    if probe.returncode != 0:
        return ("'sandbox' needs root or unprivileged user namespaces, and bubblewrap said: "
                f"{probe.stderr.decode(errors='replace').strip()}; expected isolation: none "
                "on this host")
    return None


def sandbox_uid(function: str) -> int:
    """The uid (and gid) the function's sandbox runs as: its own unprivileged one, stable
    across restarts, when Sora runs as root; Sora's own otherwise."""
    if os.geteuid() != 0:
        return os.geteuid()
    return UID_BASE + zlib.crc32(function.encode()) % UID_RANGE


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _prefix_of(executable: str) -> str | None:
    """The installation folder of an interpreter (`<prefix>/bin/python` -> `<prefix>`)."""
    real = os.path.realpath(shutil.which(executable) or executable)
    parent = os.path.dirname(os.path.dirname(real))
    return parent if parent not in ("/", "") else os.path.dirname(real)


def read_only_paths(argv: list[str], folder: str | None = None) -> list[str]:
    """What an instance needs to read besides the system and its folder: its interpreter's
    installation, Sora's runtime shims, and Sora's own Python (the `provided` adapter runs on
    it). None of these hold anything of the host's or another function's.

    An interpreter inside the function `folder` (`runtime: .venv/bin/python`, made by setup)
    is a link that setup, or a writableFolder function, could point anywhere: where it leads
    is mounted only when that is one of the host's interpreters (`folder_interpreter_problem`),
    else not at all (and the worker refuses to start, naming `runtime`)."""
    paths = [os.path.dirname(os.path.abspath(sora.__file__)), sys.prefix, sys.base_prefix]
    if folder is not None and _under(os.path.abspath(argv[0]), [folder]):
        real = os.path.realpath(argv[0])
        if not _under(real, [os.path.realpath(folder)]) and \
                folder_interpreter_problem(argv[0], folder) is None:
            paths.insert(0, _prefix_of(real))
    else:
        paths.insert(0, _prefix_of(argv[0]))
        if os.path.islink(argv[0]):
            paths.append(os.path.dirname(os.path.abspath(argv[0])))
    out = []
    for path in paths:
        if path and os.path.exists(path) and not _under(path, SYSTEM_DIRS) and path not in out:
            out.append(path)   # as named (bubblewrap follows a symlink to bind its target)
    return out


# The package managers' own settings of the user Sora runs as (registry, index, node-gyp's
# headers), relative to a home folder.
PACKAGE_CONFIGS = (".npmrc", ".config/pip/pip.conf", ".pip/pip.conf")
# What a sandboxed setup gets of the supervisor's environment: each variable by its full name,
# what package managers and build tools read to reach and trust their registries (proxies, CA
# bundles, index URLs), nothing by a short prefix: the rest may hold the host's tokens, or
# values another function takes as secrets (`secrets: {env: ...}`; a prefix `GO` once passed
# GOOGLE_API_KEY). A declared secret is withheld even when it is listed here.
SETUP_ENV_NAMES = frozenset({
    # locale and terminal
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM",
    # proxies, both spellings (curl, pip and Go read the lower-case ones, npm both)
    "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
    # CA bundles of a host behind a TLS-inspecting proxy or with a private registry
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "PIP_CERT", "CARGO_HTTP_CAINFO", "GIT_SSL_CAINFO",
    # pip: where and how it installs from
    "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_FIND_LINKS",
    "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES", "PIP_PREFER_BINARY", "PIP_ONLY_BINARY",
    "PIP_NO_BINARY", "PIP_NO_CACHE_DIR", "PIP_NO_COLOR", "PIP_PROGRESS_BAR",
    "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_BREAK_SYSTEM_PACKAGES",
    # Go modules
    "GOPROXY", "GOFLAGS", "GONOSUMDB", "GONOPROXY", "GOPRIVATE", "GOSUMDB", "GOINSECURE",
    "GOTOOLCHAIN", "CGO_ENABLED",
    # native builds (node-gyp, pip's sdists, cgo)
    "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS",
})
# npm's settings, a documented family (`npm_config_<setting>`, any case: registry, proxy,
# cafile, strict-ssl, ...), the one pattern kept: listing them would drop the operator's
# settings of a newer npm. Its credentials are not settings to pass on: a name holding one of
# these words is withheld (`_authToken`, `_auth`, `_password`, `otp`, `key`/`cert` of a client
# certificate, `keyfile`).
NPM_SETTINGS_PREFIX = "npm_config_"
NPM_CREDENTIAL_WORDS = ("auth", "token", "pass", "otp", "key", "cert", "secret")
# Where a setup sandbox's home is mounted (not at its path in the state dir, which would show
# the state dir's layout).
SETUP_HOME = "/home/sora"
# How each interpreter says where it really is.
INTERPRETER_PROBES = (["python3", "-c", "import sys; print(sys.executable)"],
                      ["node", "-p", "process.execPath"],
                      ["go", "env", "GOROOT"])


@functools.lru_cache(maxsize=1)
def interpreter_bin_dirs() -> tuple[str, ...]:
    """The folders the interpreters on PATH really live in, put first on a setup sandbox's
    PATH: a version manager's shim (pyenv, nodenv) is a script that writes to its own folder
    (pyenv rehashes after every pip install), which the sandbox keeps read-only."""
    found = []
    for probe in INTERPRETER_PROBES:
        if shutil.which(probe[0]) is None:
            continue
        try:
            out = subprocess.run(probe, capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        folder = os.path.join(out, "bin") if probe[0] == "go" else os.path.dirname(out)
        if out and os.path.isdir(folder) and folder not in found:
            found.append(folder)
    return tuple(found)


def host_interpreter_roots() -> tuple[str, ...]:
    """The installations of the host's own interpreters: the system folders, Sora's Python
    and those found on PATH (interpreter_bin_dirs)."""
    prefixes = [os.path.dirname(folder) for folder in interpreter_bin_dirs()]
    return (*SYSTEM_DIRS, sys.base_prefix, sys.prefix, *prefixes)


def folder_interpreter_problem(path: str, folder: str) -> str | None:
    """Why an interpreter at `path`, inside the function's folder, may not run in its sandbox
    (None if it may): it leads outside the folder, somewhere that is not one of the host's
    interpreters. Mounting the installation of whatever such a link names would let a function
    read any folder of the host holding an executable (`<dir>/bin/node` mounts `<dir>`)."""
    real = os.path.realpath(path)
    if _under(real, [os.path.realpath(folder)]):
        return None
    if _under(_prefix_of(real), host_interpreter_roots()):   # what would be mounted
        return None
    return f"it leads to {real}, outside the folder and not one of the host's interpreters"


def setup_paths() -> tuple[list[str], str]:
    """What a setup sandbox reads besides the system, and its PATH: the interpreters'
    installations (where outside the system folders) first, then the supervisor's PATH."""
    read_only = []
    for folder in interpreter_bin_dirs():
        prefix = os.path.dirname(folder)
        if not _under(prefix, SYSTEM_DIRS) and prefix not in read_only:
            read_only.append(prefix)
    path = os.environ.get("PATH", "/usr/bin:/bin")
    first = [folder for folder in interpreter_bin_dirs() if folder not in path.split(":")]
    return read_only, ":".join([*first, path])


def wrap(argv: list[str], fn: FunctionConfig, secrets_dir: str | None = None) -> list[str]:
    """An instance's command line in its sandbox: its folder read-only (`writableFolder`:
    writable)."""
    read_only = [(p, p) for p in read_only_paths(argv, fn.directory)]
    folder = [(fn.directory, fn.directory)]
    if secrets_dir:
        read_only.append((secrets_dir, secrets_dir))
    if not fn.writableFolder:
        read_only, folder = read_only + folder, []
    read_only.append(operator_file(fn))
    return _bwrap(fn, read_only, folder, network=fn.network, env={"HOME": "/tmp"}) + argv


def operator_file(fn: FunctionConfig) -> tuple[str, str]:
    """The bind that keeps the function's sora.yaml read-only in every sandbox, its folder
    writable or not (`writableFolder`, setup): the operator's file, mounted over the folder's
    bind (a mount point cannot be written, replaced, renamed or removed from inside). Sora
    itself never reads it again after the supervisor's start (sora.config_snapshot)."""
    return fn.source, fn.source


def grant_folder(fn: FunctionConfig) -> str | None:
    """With `writableFolder` and Sora run as root, let the function's uid write its folder
    (a POSIX ACL on everything in it, and the default ACL for what is made later; ownership
    stays as it is). Returns why it could not, or None."""
    if not (fn.sandboxed and fn.writableFolder) or os.geteuid() != 0:
        return None
    if shutil.which("setfacl") is None:
        return "expected setfacl on PATH for writableFolder (apt-get install acl)"
    uid = sandbox_uid(fn.name)
    done = subprocess.run(["setfacl", "-R", "-m", f"u:{uid}:rwX,d:u:{uid}:rwX", fn.directory],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        return f"could not give the function's uid write access: {done.stderr.strip()}"
    return None


def wrap_setup(command: str, fn: FunctionConfig, folder: str, home: str) -> list[str]:
    """A `setup` command in the function's sandbox: `folder` (its folder, or a copy of it) is
    mounted writable where the function folder is, `home` is its writable home at SETUP_HOME
    (npm's and pip's caches, kept between setups), and it has the network (to install
    packages) even with `network: false`."""
    prefixes, path = setup_paths()
    writable = [(folder, fn.directory), (home, SETUP_HOME)]
    # sora.yaml from the folder itself, not the copy: the operator's file, out of setup's reach.
    read_only = [(p, p) for p in prefixes] + [operator_file(fn)]
    return _bwrap(fn, read_only, writable, network=True,
                  env={"HOME": SETUP_HOME, "PATH": path}) + ["/bin/sh", "-c", command]


def setup_environment(fn: FunctionConfig, withheld: frozenset[str] = frozenset(),
                      host_env: dict[str, str] | None = None) -> dict[str, str]:
    """A sandboxed setup command's environment (PATH and HOME are set by wrap_setup): the
    package managers' part of the supervisor's (`host_env`, default os.environ), less
    `withheld` (every variable a function of the host declares as a secret), then the
    function's own `env`."""
    host_env = os.environ if host_env is None else host_env
    env = {key: value for key, value in host_env.items()
           if passed_to_setup(key) and key not in withheld}
    env.update(fn.env)
    return env


def passed_to_setup(name: str) -> bool:
    """Whether a host variable of this name may reach a setup sandbox (see SETUP_ENV_NAMES)."""
    if name in SETUP_ENV_NAMES:
        return True
    if name.lower().startswith(NPM_SETTINGS_PREFIX):
        setting = name[len(NPM_SETTINGS_PREFIX):].lower()
        return bool(setting) and not any(word in setting for word in NPM_CREDENTIAL_WORDS)
    return False


def copy_package_configs(home: str, uid: int) -> None:
    """Copy the package managers' settings of the user Sora runs as into a setup sandbox's
    home, owned by its uid: setup installs from the registries the host is set up for."""
    for name in PACKAGE_CONFIGS:
        source, target = os.path.expanduser(os.path.join("~", name)), os.path.join(home, name)
        if not os.path.isfile(source):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(source, target)
        for path in (target, os.path.dirname(target)):
            os.chown(path, uid, uid)


def _bwrap(fn: FunctionConfig, read_only: list[tuple[str, str]],
           writable: list[tuple[str, str]], *, network: bool, env: dict[str, str]) -> list[str]:
    """bubblewrap's command line up to the `--` before the sandboxed command."""
    # No --new-session: the sandbox stays in the instance's process group, killed as one (its
    # stdio are pipes, not a terminal, so there is no terminal to inject keystrokes into).
    as_root = os.geteuid() == 0
    cmd = ["bwrap", "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try"]
    if not as_root:
        cmd.append("--unshare-user")   # the mounts are made in a user namespace of its own
    if not network:
        cmd.append("--unshare-net")
    for path in SYSTEM_DIRS:
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--size", str(fn.tmpSize * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"]
    # Parents before what is mounted inside them.
    binds = sorted([("--ro-bind", *b) for b in read_only] + [("--bind", *b) for b in writable],
                   key=lambda b: b[2].count("/"))
    made = {"/tmp", "/dev", "/proc"}
    for _, _, dest in binds:
        parent = os.path.dirname(dest)
        chain = []
        while parent not in ("/", "") and parent not in made and \
                not _under(parent, SYSTEM_DIRS):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            cmd += ["--perms", "0755", "--dir", folder]
            made.add(folder)
        made.add(dest)   # what is mounted inside it (sora.yaml in its folder) needs no --dir
    for kind, source, dest in binds:
        cmd += [kind, source, dest]
    # No --chdir: it starts where its process starts (an instance or setup in its folder, a
    # pre-started runtime in / until a function takes it and it changes into that folder).
    for name, value in env.items():
        cmd += ["--setenv", name, value]
    cmd.append("--")
    if as_root:
        uid = sandbox_uid(fn.name)
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
    return cmd
