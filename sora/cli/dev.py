"""`sora dev [PATH]`: serve the function folders under PATH with watch mode on, in the
foreground, with a host config and a state dir of its own (nothing to write by hand).

PATH is a function folder (it holds sora.yaml) or a folder of them (each subfolder that holds
one). The host config is written into the state dir, which is:
  - PATH/.sora when PATH is a folder of functions (kept between runs: setup's cache, logs);
  - $XDG_CACHE_HOME/sora/dev/NAME-HASH (~/.cache/...) when PATH is itself a function folder,
    whose sandbox would show a state dir inside it to the function (Sora refuses that);
  - --state-dir DIR when given.
It serves plain HTTP on 127.0.0.1 (--bind to change), on --port (default 8080 if free, else
any free port; 0: any free port), without API keys (every route is open, as befits a
machine's own loopback), with full error details. Ctrl-C stops it as it stops
`sora-supervisor start` (which it runs, in its own place: exec): in-flight calls finish, then
everything exits.
"""
from __future__ import annotations

import hashlib
import os
import socket
import stat
import sys
import tempfile

import yaml

from ..config import FUNCTION_FILE
from .host import CliError

DEFAULT_PORT = 8080
CONFIG_NAME = "dev-host-config.yaml"
# Subfolders that are no function's own (hidden ones, .sora and .git among them, are skipped too).
NOT_FUNCTIONS = frozenset({"node_modules", "__pycache__"})
# The longest state dir path Sora takes (sora.config: its sockets' paths have at most 107
# bytes; the longest is run/w-<pid>.sock).
STATE_DIR_MAX = 88


def function_folders(path: str) -> list[str]:
    """PATH itself when it is a function folder, else its subfolders that are."""
    if os.path.isfile(os.path.join(path, FUNCTION_FILE)):
        return [path]
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise CliError(f"dev: cannot read {path} ({exc.strerror})", 2) from None
    return [os.path.join(path, name) for name in names
            if not name.startswith(".") and name not in NOT_FUNCTIONS
            and os.path.isfile(os.path.join(path, name, FUNCTION_FILE))]


def default_state_dir(path: str) -> str:
    tag = hashlib.sha256(path.encode()).hexdigest()[:8]
    if not os.path.isfile(os.path.join(path, FUNCTION_FILE)):
        chosen = os.path.join(path, ".sora")
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or \
            os.path.join(os.path.expanduser("~"), ".cache")
        chosen = os.path.join(cache, "sora", "dev", f"{os.path.basename(path)[:40]}-{tag}")
    if len(chosen.encode()) <= STATE_DIR_MAX:
        return chosen
    # Too long for the Unix sockets made in it: a short one of this user's in the temp dir.
    return os.path.join(tempfile.gettempdir(), f"sora-dev-{os.getuid()}-{tag}")


def port_free(bind: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError:
            return False
    return True


def any_free_port(bind: str) -> int:
    with socket.socket() as probe:
        probe.bind((bind, 0))
        return probe.getsockname()[1]


def choose_port(bind: str, wanted: int | None) -> int:
    if wanted is None:
        return DEFAULT_PORT if port_free(bind, DEFAULT_PORT) else any_free_port(bind)
    return any_free_port(bind) if wanted == 0 else wanted


def write_host_config(path: str, folders: list[str], state_dir: str, port: int,
                      bind: str) -> str:
    """The dev host's config, in its state dir (made 0700: Sora's own files)."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    # It may be in the shared temp dir: it must be this user's own folder, not a link.
    st = os.lstat(state_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise CliError(f"dev: state dir {state_dir}: expected a folder of this user's, "
                       "got another's or a link (give one with --state-dir)", 2)
    os.chmod(state_dir, 0o700)
    config = os.path.join(state_dir, CONFIG_NAME)
    spec = {"functionPaths": folders,
            "server": {"httpPort": port, "bind": bind, "errorDetail": "full"},
            "stateDir": state_dir}
    with open(config + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(f"# Written by `sora dev {path}` at each start; edits are overwritten.\n")
        yaml.safe_dump(spec, fh, sort_keys=False)
    os.replace(config + ".tmp", config)
    return config


def cmd_dev(args) -> int:
    path = os.path.abspath(args.path or ".")
    if not os.path.isdir(path):
        raise CliError(f"dev: expected a folder, got {path}", 2)
    folders = function_folders(path)
    if not folders:
        raise CliError(f"dev: no function folder in {path} (expected {path}/{FUNCTION_FILE} "
                       f"or {path}/*/{FUNCTION_FILE}; `sora init NAME` makes one)", 2)
    state_dir = os.path.abspath(args.state_dir) if args.state_dir else default_state_dir(path)
    port = choose_port(args.bind, args.port)
    config = write_host_config(path, folders, state_dir, port, args.bind)
    print(f"sora dev: {len(folders)} function(s) from {path}, watching for changes; "
          f"state in {state_dir}; Ctrl-C stops", flush=True)
    sys.stdout.flush()
    # The supervisor takes this process's place (the CLI imports no process's internals):
    # the same pid, its Ctrl-C and its exit status.
    os.execv(sys.executable, [sys.executable, "-m", "sora.supervisor.cli", "start", "--watch",
                              "--config", config])
