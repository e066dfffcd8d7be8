"""`sora-supervisor start|check --config PATH`."""
from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError, HostConfig, load_host_config

EXIT_CONFIG_ERROR = 2


def _load(path: str) -> HostConfig | None:
    try:
        return load_host_config(path)
    except ConfigError as exc:
        print(f"sora: configuration error\n{exc}", file=sys.stderr)
        return None


def check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG_ERROR
    for fn in config.functions:
        print(f"ok      {fn.name:<24} {fn.language:<8} {fn.directory}")
    for broken in config.broken:
        print(f"broken  {broken.name:<24} {broken.reason}")
    if config.broken:
        print(f"{len(config.broken)} function(s) would be skipped", file=sys.stderr)
        return 1
    print(f"{config.path}: {len(config.functions)} function(s), configuration is valid")
    return 0


def start(args: argparse.Namespace) -> int:
    from .arbiter import Arbiter, StateDirBusy  # imported late: `check` needs none of it
    from .listeners import ListenerUnavailable

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG_ERROR
    try:
        return Arbiter(config).run()
    except (StateDirBusy, ListenerUnavailable) as exc:
        print(f"sora: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sora-supervisor",
                                     description="Run Sora: serverless functions on this host.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("start", start, "validate the config and serve in the foreground"),
                             ("check", check, "validate the config and every function, then exit")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", "-c", required=True, help="path to host-config.yaml")
        cmd.set_defaults(func=func)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s [supervisor] %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
