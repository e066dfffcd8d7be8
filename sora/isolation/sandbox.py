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
  keeps Sora's (unprivileged) uid, without capabilities on the host;
- under a seccomp filter (sora.isolation.seccomp) that refuses new namespaces (so no nested
  user namespace: `unshare -Ur` fails), mounts, ptrace and the kernel's rarer interfaces;
  without root, bubblewrap's --disable-userns as well.

It starts once per instance (a warm invocation pays nothing for it). bubblewrap creates the
folders above a bind as 0700 when it runs as root, so each is made 0755 first.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import sora

from ..config import FunctionConfig
from . import nofollow, seccomp, watched

from .uids import sandbox_uid  # noqa: F401 - where the sandbox's users look for it

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc")

# Variables the dynamic loader and the C library act on when a program starts (glibc's list
# of those it drops for set-uid programs, and its tunables). A function's `env` (the
# management API's `Environment`, a sora.yaml) is the function's: given to bubblewrap's
# process, LD_PRELOAD naming a library in the function's own code ran that library as root
# on the host before any namespace existed (so did LD_LIBRARY_PATH with a libc or libcap
# that setup wrote into the folder). So they are never in the environment of bubblewrap or
# of setpriv (root inside the sandbox): `env` sets them after setpriv has dropped to the
# function's uid, for the function's own command only (`loader_variables`,
# `without_loader_variables`).
LOADER_ENV = re.compile(r"^(LD_[A-Z0-9_]*|GCONV_PATH|GETCONF_DIR|GLIBC_TUNABLES|HOSTALIASES|"
                        r"LOCALDOMAIN|LOCPATH|MALLOC_[A-Z0-9_]*|NIS_PATH|NLSPATH|"
                        r"RESOLV_HOST_CONF|RES_OPTIONS|TZDIR)$")


def loader_variables(fn: FunctionConfig) -> dict[str, str]:
    """The function's own variables that must reach only its command (see LOADER_ENV)."""
    return {key: value for key, value in fn.env.items() if LOADER_ENV.match(key)}


def without_loader_variables(env: dict[str, str], fn: FunctionConfig) -> dict[str, str]:
    """`env` for bubblewrap's own process: less the function's loader variables, which
    `_bwrap` sets after setpriv instead."""
    own = loader_variables(fn)
    return {key: value for key, value in env.items()
            if not (key in own and own[key] == value)}


def available() -> bool:
    return shutil.which("bwrap") is not None and shutil.which("setpriv") is not None


def unavailable_reason() -> str | None:
    """Why an instance cannot be sandboxed on this host (None when it can): checked once at a
    worker's start, so the function is reported FATAL with the reason, not each instance."""
    if not available():
        return ("expected bubblewrap (bwrap) and setpriv on PATH for 'sandbox' (apt-get install "
                "bubblewrap), or isolation: none")
    if (reason := seccomp.unavailable_reason()) is not None:
        return reason
    if os.geteuid() == 0:
        return None
    try:
        probe = subprocess.run(["bwrap", "--unshare-user", "--disable-userns", "--ro-bind", "/",
                                "/", "true"],
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"'sandbox' could not start bubblewrap ({exc}); or isolation: none"
    if probe.returncode != 0:
        return ("'sandbox' needs root or unprivileged user namespaces, and bubblewrap said: "
                f"{probe.stderr.decode(errors='replace').strip()}; expected isolation: none "
                "on this host")
    return None


# The operator's secrets (the host config, its TLS key, the CURVE keys folder) that lie under
# a folder every sandbox binds read-only: the README's own example keeps the keys in
# /etc/sora/keys. Sora as root keeps them from a function by its uid (the keys folder is
# 0700), but Sora run unprivileged gives the function its own uid, and a setup or an instance
# with network could read and send away the host's secret key. The supervisor names them
# (`hide`) and every sandbox of this process and its children (workers, the runtime pool)
# covers them: an empty tmpfs over a folder, /dev/null over a file.
HIDDEN_ENV = "SORA_SANDBOX_HIDDEN"


def hide(paths) -> None:
    """Cover `paths` (as given and as resolved) in every sandbox this process and the children
    it starts from now on make: they inherit the list through their environment."""
    out = []
    for path in paths:
        if path and os.path.exists(path):
            for each in (os.path.abspath(path), os.path.realpath(path)):
                if each not in out:
                    out.append(each)
    os.environ[HIDDEN_ENV] = os.pathsep.join(out)


def hidden_paths() -> list[str]:
    return [path for path in os.environ.get(HIDDEN_ENV, "").split(os.pathsep) if path]


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _prefix_of(executable: str) -> str | None:
    """The installation folder of an interpreter (`<prefix>/bin/python` -> `<prefix>`)."""
    return _installation_of(os.path.realpath(shutil.which(executable) or executable))


def _installation_of(real: str) -> str:
    """The installation folder of an interpreter's resolved path."""
    parent = os.path.dirname(os.path.dirname(real))
    return parent if parent not in ("/", "") else os.path.dirname(real)


def read_only_paths(argv: list[str], folder: str | None = None) -> list[str]:
    """What an instance needs to read besides the system and its folder: its interpreter's
    installation, Sora's runtime shims, and Sora's own Python (the `provided` adapter runs on
    it). None of these hold anything of the host's or another function's.

    An interpreter inside the function `folder` (`runtime: .venv/bin/python`, made by setup)
    is the function's: setup, or a writableFolder function, may have made it a link to
    anywhere, and bubblewrap binds as root what it names. Where it leads is bound only if that
    is an installation the host itself runs (interpreter_problem); one inside the folder is
    bound with the folder (its "installation" two levels up would be the folder holding the
    other functions)."""
    paths = [os.path.dirname(os.path.abspath(sora.__file__)), sys.prefix, sys.base_prefix]
    interpreter = os.path.abspath(argv[0])
    if folder is not None and _under(interpreter, [folder]):
        # The link is resolved once, and what is bound is then a trusted path (one of the
        # host's installations), never a fresh resolution of the link: a writableFolder
        # function flipping it between checks bound any folder of the host (~12 % of starts).
        real = os.path.realpath(interpreter)
        prefix = _installation_of(real)
        if not _under(real, [os.path.realpath(folder)]) and prefix in interpreter_prefixes():
            paths.insert(0, prefix)
    else:
        paths.insert(0, _prefix_of(argv[0]))
        if os.path.islink(argv[0]):
            paths.append(os.path.dirname(interpreter))
    out = []
    for path in paths:
        if path and os.path.exists(path) and not _under(path, SYSTEM_DIRS) and path not in out:
            out.append(path)   # as named (bubblewrap follows a symlink to bind its target)
    return out


def interpreter_problem(argv: list[str], folder: str) -> str | None:
    """Why the interpreter of `argv`, inside the function `folder`, is not bound into its
    sandbox (read_only_paths), or None: it is in the folder, the system, or an installation
    of the host's own interpreters. The worker checks it at start, so the function is FATAL
    with this reason rather than crashing at every start."""
    interpreter = os.path.abspath(argv[0])
    if not _under(interpreter, [folder]):
        return None
    real = os.path.realpath(interpreter)
    if _under(real, [os.path.realpath(folder), *SYSTEM_DIRS]) or \
            _installation_of(real) in interpreter_prefixes():
        return None
    return (f"expected an interpreter in the function folder, the system or an installation "
            f"the host runs, got {argv[0]} linked to {real} (a link out of the folder is not "
            "followed into the sandbox)")


def interpreter_prefixes() -> set[str]:
    """The installations of the interpreters the host runs: Sora's own Python and those on
    its PATH (which setup runs, so a virtualenv that setup makes points to one of them)."""
    return {sys.prefix, sys.base_prefix,
            *(os.path.dirname(folder) for folder in interpreter_bin_dirs())}


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
    read_only += operator_file(fn)
    return _bwrap(fn, read_only, folder, network=fn.network, env={"HOME": "/tmp"},
                  folder_fds=watched.binds(fn)) + argv


@contextlib.contextmanager
def passed_to(argv: list[str]):
    """`argv` (a sandbox's command line) with its descriptor slots filled in (the seccomp
    program's, each watched folder's: sora.isolation.watched), and the descriptors to pass the
    child, closed once it is spawned. UnsafePath if a watched folder is a link."""
    with seccomp.passed_to(argv) as (argv, filter_fds), \
            watched.passed_to(argv) as (argv, folder_fds):
        yield argv, (*filter_fds, *folder_fds)


def operator_file(fn: FunctionConfig) -> list[tuple[str, str]]:
    """The bind that keeps the function's sora.yaml read-only in every sandbox, its folder
    writable or not (`writableFolder`, setup): the operator's file, mounted over the folder's
    bind (a mount point cannot be written, replaced, renamed or removed from inside). Sora
    itself never reads it again after the supervisor's start (sora.config_snapshot).
    A function created through the management API has none in its folder (its function.json
    is beside the folder, in the state dir, never mounted): nothing to bind."""
    return [] if fn.managed else [(fn.source, fn.source)]


def grant_folder(fn: FunctionConfig) -> str | None:
    """With `writableFolder` and Sora run as root, let the function's uid write its folder
    (a POSIX ACL on everything in it, and the default ACL for what is made later; ownership
    stays as it is). Returns why it could not, or None.

    The folder is the function's to change (another worker's instances may be changing it
    now), so setfacl walks it physically (`-P`: a link is skipped, never followed, which is
    also its default below the top) and runs confined to the folder (`confined`): a link
    swapped in during the walk can lead nowhere else."""
    if not (fn.sandboxed and fn.writableFolder) or os.geteuid() != 0:
        return None
    if shutil.which("setfacl") is None:
        return "expected setfacl on PATH for writableFolder (apt-get install acl)"
    uid = sandbox_uid(fn)
    done = subprocess.run(confined(["setfacl", "-R", "-P", "-m", f"u:{uid}:rwX,d:u:{uid}:rwX",
                                    fn.directory], [fn.directory]),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          # bubblewrap's init can outlive it by a moment, re-parented to the
                          # supervisor, whose orphan sweep kills its process group: not ours.
                          start_new_session=True)
    if done.returncode != 0:
        return f"could not give the function's uid write access: {done.stderr.strip()}"
    return None


# What a file tool that Sora runs as root on a function's files may do: read and write any
# file there and set its owner and mode, nothing else (no mounts, no ptrace, no raw network).
CONFINED_CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
                 "CAP_FSETID")


def confined(argv: list[str], paths: list[str],
             bound_fds: list[tuple[int, str]] = ()) -> list[str]:
    """`argv`, a file tool Sora runs as root over folders the function can change (rsync,
    setfacl), in a mount namespace holding only the system's programs (read-only, and no
    `/etc` but the loader's cache) and `paths` (writable, each at its own path). rsync and
    setfacl do not follow links where they meet them (tests/unit/test_nofollow.py proves
    it), but they name files by path, so a link swapped in while they run (by another setup
    or a `writableFolder` instance of the same function) would be followed: here it can only
    lead to those same folders or to the read-only programs, not to a key or a host file.
    `bound_fds` (descriptor, path): a folder opened without following links, bound writable
    by its descriptor at `path` (pass the descriptors to the process)."""
    cmd = [program("bwrap"), "--die-with-parent", "--unshare-pid", "--unshare-ipc",
           "--unshare-uts", "--unshare-net", "--unshare-cgroup-try"]
    for path in SYSTEM_DIRS:
        if path != "/etc":
            cmd += ["--ro-bind-try", path, path]
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache", "--dev", "/dev"]
    for path in paths:
        cmd += ["--bind", path, path]
    for fd, path in bound_fds:
        cmd += ["--bind-fd", str(fd), path]
    cmd += ["--cap-drop", "ALL"]
    for cap in CONFINED_CAPS:
        cmd += ["--cap-add", cap]
    return [*cmd, "--", *argv]


def folder_sync(source: str, dest: str, uid: int, gid: int,
                exclude: str | None = None, keep_newer: bool = False) -> list[str]:
    """rsync of `source`'s content into `dest` (what `source` lacks is deleted), owned by
    uid:gid, confined to the two folders. `--archive` copies links as links and chowns
    them with lchown, replaces a link in `dest` rather than write through it, and never
    follows one; devices, fifos and sockets are not copied (setup has no use for them, and a
    fifo would hang whatever opens it). Modes are kept but for the set-id bits and others'
    and group's write: setup, as the function's uid, can `chmod 4755` a copy of a shell, which
    would come back owned by the folder's owner (root) and set-uid; or leave a folder anyone
    could write. `--sparse`: a sparse file setup made (terabytes that take no disk) is written
    sparse, not in full. `exclude` (a name at the top) is neither written nor deleted in
    `dest`. `keep_newer` (`--update`): a file of `dest` newer than `source`'s is left as it is
    (the developer saved it while setup ran on the copy: watch mode); links and a file of
    another type are replaced whatever their times."""
    skip = [f"--exclude=/{exclude}"] if exclude else []
    skip += ["--update"] if keep_newer else []
    return confined(["rsync", "--archive", "--delete", "--numeric-ids", "--no-devices",
                     "--no-specials", "--sparse", "--chmod=ugo-s,go-w", *skip,
                     f"--chown={uid}:{gid}", f"{source}/", f"{dest}/"],
                    [source, dest])


def wrap_setup(command: str, fn: FunctionConfig, folder: str, home: str) -> list[str]:
    """A `setup` command in the function's sandbox: `folder` (its folder, or a copy of it) is
    mounted writable where the function folder is, `home` is its writable home at SETUP_HOME
    (fresh_setup_home: one per setup run), and it has the network (to install packages) even
    with `network: false`."""
    prefixes, path = setup_paths()
    writable = [(folder, fn.directory), (home, SETUP_HOME)]
    # sora.yaml from the folder itself, not the copy: the operator's file, out of setup's reach.
    read_only = [(p, p) for p in prefixes] + operator_file(fn)
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


def fresh_setup_home(parent: str, function: str, uid: int) -> str:
    """A new, empty home for one setup run (in `parent`, a folder of Sora's), owned by the
    function's uid, with a copy of the package managers' settings of the user Sora runs as:
    setup installs from the registries the host is set up for. Made afresh for every run:
    what an earlier setup left in its home (a link named `.npmrc` to a host file, say) is
    gone, never written through."""
    home = tempfile.mkdtemp(prefix=f"{function}.home-{os.getpid()}-", dir=parent)
    home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(home_fd, uid, uid)
        for name in PACKAGE_CONFIGS:
            source = os.path.expanduser(os.path.join("~", name))
            if os.path.isfile(source):   # Sora's user's own file: its links are the host's
                with open(source, "rb") as fh:
                    nofollow.create_beneath(home_fd, name, fh.read(), uid)
    finally:
        os.close(home_fd)
    return home


def remove_setup_homes(parent: str, function: str) -> None:
    """Remove the homes of `function`'s setups whose process is gone (a run removes its own
    when it ends; a killed one leaves it), and the one older versions kept between runs.
    shutil.rmtree removes links, never what they point to."""
    for path in glob.glob(os.path.join(parent, glob.escape(function) + ".home*")):
        rest = os.path.basename(path)[len(function) + len(".home"):]
        pid = rest[1:].partition("-")[0]
        if rest == "" or (pid.isdigit() and not os.path.exists(f"/proc/{pid}")):
            shutil.rmtree(path, ignore_errors=True)


def _bwrap(fn: FunctionConfig, read_only: list[tuple[str, str]],
           writable: list[tuple[str, str]], *, network: bool, env: dict[str, str],
           folder_fds: list[tuple[str, str, str]] = ()) -> list[str]:
    """bubblewrap's command line up to the `--` before the sandboxed command. `folder_fds`:
    (option, descriptor slot, destination) of the watched folders (sora.isolation.watched),
    mounted after every other bind: one in the function folder goes over the folder's bind,
    and its parents are the folder's own (no --dir is made through them)."""
    # No --new-session: the sandbox stays in the instance's process group, killed as one (its
    # stdio are pipes, not a terminal, so there is no terminal to inject keystrokes into).
    as_root = os.geteuid() == 0
    cmd = [program("bwrap"), "--die-with-parent", "--unshare-pid", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try"]
    if not as_root:
        cmd.append("--unshare-user")   # the mounts are made in a user namespace of its own
        # ... and the function may make none of its own (as root there is no user namespace
        # to limit: the seccomp filter's clone/unshare rules refuse them).
        cmd.append("--disable-userns")
    cmd += seccomp.bwrap_options()   # sora.isolation.seccomp: refused system calls
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
    bound = [dest for _, _, dest in binds]
    for kind, slot, dest in folder_fds:
        parent = os.path.dirname(dest)
        chain = []
        while parent not in ("/", "") and parent not in made and \
                not _under(parent, [*bound, *SYSTEM_DIRS]):
            chain.append(parent)
            parent = os.path.dirname(parent)
        for folder in reversed(chain):
            cmd += ["--perms", "0755", "--dir", folder]
            made.add(folder)
        cmd += [kind, slot, dest]
        bound.append(dest)
    # What was mounted inside a watched folder's destination is mounted again over it: the
    # function folder itself watched (`path: .`) would otherwise cover its sora.yaml's
    # read-only bind, writable with `writable: true`.
    for kind, source, dest in binds:
        if any(dest != d and _under(dest, [d]) for _, _, d in folder_fds):
            cmd += [kind, source, dest]
    binds += list(folder_fds)
    mounted = [*SYSTEM_DIRS, *(dest for _, _, dest in binds)]
    for path in hidden_paths():   # after what it lies in
        if _under(path, mounted) and os.path.exists(path):
            cmd += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    # No --chdir: it starts where its process starts (an instance or setup in its folder, a
    # pre-started runtime in / until a function takes it and it changes into that folder).
    for name, value in env.items():
        cmd += ["--setenv", name, value]
    cmd.append("--")
    if as_root:
        uid = sandbox_uid(fn)
        cmd += [program("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
    if loader := loader_variables(fn):   # as the function's uid, in the sandbox (LOADER_ENV)
        cmd += [ENV_PROGRAM, *(f"{key}={value}" for key, value in sorted(loader.items()))]
    return cmd


ENV_PROGRAM = "/usr/bin/env" if os.path.exists("/usr/bin/env") else "/bin/env"


@functools.lru_cache(maxsize=None)
def program(name: str) -> str:
    """The absolute path of a program Sora runs as root around a function (bwrap, setpriv),
    found on Sora's own PATH. Never by name: the process is given the function's environment,
    whose PATH is the function's (`Environment.PATH` naming its own code folder made root
    run the `bwrap` script in its zip on the host; bubblewrap looks setpriv up on the PATH it
    is given, as root in the sandbox)."""
    return shutil.which(name) or name
