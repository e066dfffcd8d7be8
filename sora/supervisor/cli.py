"""`sora-supervisor start|join|check|reload --config PATH`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from ..config import BrokenFunction, ConfigError, HostConfig, load_host_config

EXIT_CONFIG_ERROR = 2
EXIT_NO_SUPERVISOR = 3
# A reload waits for setups (npm install, pip) and new workers: minutes, at worst.
RELOAD_TIMEOUT = 900.0
JOIN_NEEDS = ("cluster.controlPlane: required by `sora-supervisor join` (expected the main "
              "host's cluster.listen as this host reaches it, tcp://HOST:PORT, with "
              "cluster.advertise and cluster.keys)")
START_REFUSES = ("cluster.controlPlane: set, so this host joins another: run it with "
                 "`sora-supervisor join` (`start` runs a main host, which takes joins on "
                 "cluster.listen)")


def _load(path: str) -> HostConfig | None:
    try:
        return load_host_config(path)
    except ConfigError as exc:
        print(f"sora: configuration error\n{exc}", file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    from ..runtimes.load_check import LoadResult, check_functions  # not for `start`

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG_ERROR
    broken = list(config.broken)
    valid = 0
    # Each module loaded as an instance would load it: a syntax error or a missing handler
    # is reported here, with its file, line and column, not only when the host starts.
    checked = check_functions(config.functions, config.stateDir) if not args.no_load else \
        [(fn, LoadResult(None, "not loaded: --no-load")) for fn in config.functions]
    for fn, loaded in checked:
        if loaded.broken:
            broken.append(BrokenFunction(fn.name, fn.directory, loaded.reason))
            continue
        valid += 1
        note = f"  ({loaded.reason})" if loaded.reason else ""
        print(f"ok      {fn.name:<24} {fn.language:<8} {fn.directory}{note}")
    for fault in broken:
        print(f"broken  {fault.name:<24} {fault.reason}")
    if broken:
        print(f"{len(broken)} function(s) would not serve", file=sys.stderr)
        return 1
    print(f"{config.path}: {valid} function(s), configuration is valid")
    return 0


def start(args: argparse.Namespace) -> int:
    from .arbiter import Arbiter, StateDirBusy  # imported late: `check` needs none of it
    from .listeners import ListenerUnavailable

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG_ERROR
    joining = args.command == "join"
    if joining and not config.cluster.controlPlane:
        print(f"sora: configuration error\n{ConfigError(config.path, [JOIN_NEEDS])}",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if not joining and config.cluster.controlPlane:
        print(f"sora: configuration error\n{ConfigError(config.path, [START_REFUSES])}",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from ..store.backend import SchemaTooNew
    try:
        return Arbiter(config, joining=joining, watch=getattr(args, "watch", False)).run()
    except (StateDirBusy, ListenerUnavailable, SchemaTooNew) as exc:
        print(f"sora: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def reload(args: argparse.Namespace) -> int:
    """Ask the supervisor running on the config's state dir to reload (the admin channel);
    print its report as JSON. Exit 0 when every function reloaded (or was unchanged), 1 when
    one failed or the config could not be read, 2 for a config this command cannot read, 3
    when no supervisor answers."""
    from ..control import admin

    try:
        config = load_host_config(args.config, read_functions=False)
    except ConfigError as exc:
        print(f"sora: configuration error\n{exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    request = {"functions": args.function or None, "setup": args.setup}
    try:
        report = admin.request(config.stateDir, admin.OP_RELOAD, request, args.timeout)
    except admin.AdminUnavailable as exc:
        print(f"sora: {exc}", file=sys.stderr)
        return EXIT_NO_SUPERVISOR
    print(json.dumps(report, indent=2))
    if "error" in report:
        return 1
    failed = [f for f in report.get("functions", {}).values() if f.get("action") == "failed"]
    return 1 if failed or report.get("errors") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sora-supervisor",
                                     description="Run Sora: serverless functions on this host.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("start", start, "validate the config and serve in the foreground"),
                             ("join", start, "validate the config and serve the functions "
                              "for the cluster named in its cluster.controlPlane, in the "
                              "foreground"),
                             ("reload", reload, "tell the running supervisor to read the "
                              "config and every function again and apply the changes without "
                              "a restart; prints its report (JSON)"),
                             ("check", check, "validate the config and every function, then exit")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", "-c", required=True, help="path to host-config.yaml")
        cmd.set_defaults(func=func)
        if name == "start":
            cmd.add_argument("--watch", action="store_true", help="watch each function's "
                             "folder and reload only the function whose files changed (for "
                             "development; node_modules, .venv, __pycache__ and .git are "
                             "ignored; a change to package.json, package-lock.json, "
                             "requirements*.txt or sora.yaml's setup runs setup first)")
        if name == "reload":
            cmd.add_argument("--function", "-f", action="append", metavar="NAME",
                             help="reload only this function (repeatable; default: all, and "
                                  "the host's own settings)")
            cmd.add_argument("--setup", choices=("auto", "skip", "force"), default="auto",
                             help="auto: run a changed function's setup when its folder "
                                  "changed since the last one (default); skip: never; force: "
                                  "always")
            cmd.add_argument("--timeout", type=float, default=RELOAD_TIMEOUT,
                             help="seconds to wait for the answer (default %(default)g)")
    # `cmd` is the last: check.
    cmd.add_argument("--no-load", action="store_true", help="check the config only: do not "
                     "load each function's module (in its sandbox) to find load errors")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [supervisor] %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
