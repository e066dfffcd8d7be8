"""`sora deploy | versions | alias | rollback | reload`: changing what a host serves.

deploy, versions, alias and rollback are calls to the host's Lambda management API, made with
botocore (sora.cli.lambda_api), so they mean exactly what the same calls from boto3 or the
AWS CLI mean; reload is Sora's own `POST /api/reload`.
"""
from __future__ import annotations

import json
import re
import sys

from .deploy import code_sha256, deploy, host_limits
from .host import CliError, Host, config_path
from .lambda_api import api_errors, lambda_client, raw_answer
from .output import emit_json, shown, table

WEIGHT_RE = re.compile(r"^(?P<version>[0-9]+)=(?P<weight>[0-9.]+)(?P<percent>%?)$")
# The field of an alias (GetAlias, as the host sends it) naming the version it named before
# its last move: Sora's, beside Lambda's (sora.versions.aliases).
PREVIOUS_VERSION = "PreviousVersion"
RELOAD_PATH = "/api/reload"
SETUP_CHOICES = ("auto", "skip", "force")


# --- deploy ---------------------------------------------------------------------------------

def cmd_deploy(args) -> int:
    host = Host.from_args(args)
    client = lambda_client(args, host)
    with api_errors(host.url):
        result = deploy(client, args.dir, args.name, args.publish, args.description,
                        host.timeout, host_limits(config_path(args.config)))
    if args.json:
        emit_json(result.as_json())
        return 0
    if result.not_carried:
        print(f"sora: note: {', '.join(result.not_carried)} in sora.yaml: not part of Lambda's "
              "API, so the deployed function has the host's defaults for them (ship what "
              "setup would make, such as node_modules, in the folder)", file=sys.stderr)
    for link in result.code.skipped_links:
        print(f"sora: left out {link} (a link npm made for a command-line tool)",
              file=sys.stderr)
    size = f"{result.code.files} files, {len(result.code.data) / 1024:.1f} KB zipped"
    what = {"created": "created", "unchanged": "unchanged, as on the host",
            "updated": "updated " + " and ".join(result.changed)}[result.action]
    print(f"{result.name}: {what} ({size}, CodeSha256 {code_sha256(result.code.data)})")
    if result.version is not None:
        print(f"{result.name}: version {result.version}")
    return 0


# --- versions -------------------------------------------------------------------------------

def _paged(call, key: str, **params) -> list[dict]:
    """Every item of a Marker/NextMarker listing."""
    items, marker = [], None
    while True:
        page = call(**params, **({"Marker": marker} if marker else {}))
        items += page.get(key, [])
        marker = page.get("NextMarker")
        if not marker:
            return items


def alias_labels(aliases: list[dict]) -> dict[str, list[str]]:
    """Each version's aliases as `sora versions` shows them: `live`, or `live (10%)` for the
    share an alias's weight sends to a version, and `live (90%)` for the rest."""
    labels: dict[str, list[str]] = {}
    for alias in sorted(aliases, key=lambda a: a["Name"]):
        weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        if not weights:
            labels.setdefault(alias["FunctionVersion"], []).append(alias["Name"])
            continue
        other = sum(weights.values())
        labels.setdefault(alias["FunctionVersion"], []).append(
            f"{alias['Name']} ({percent(1 - other)})")
        for version, weight in weights.items():
            labels.setdefault(version, []).append(f"{alias['Name']} ({percent(weight)})")
    return labels


def percent(weight: float) -> str:
    return f"{weight * 100:.4g}%"


def render_versions(versions: list[dict], aliases: list[dict]) -> None:
    labels = alias_labels(aliases)
    rows = [[v["Version"], ", ".join(labels.get(v["Version"], [])) or "-",
             v.get("CodeSha256"), v.get("LastModified"), shown(v.get("Description") or "")]
            for v in versions]
    table(rows, ["VERSION", "ALIASES", "CODE SHA256", "LAST MODIFIED", "DESCRIPTION"])


def cmd_versions(args) -> int:
    host = Host.from_args(args)
    client = lambda_client(args, host)
    with api_errors(host.url):
        versions = _paged(client.list_versions_by_function, "Versions", FunctionName=args.name)
        aliases = _paged(client.list_aliases, "Aliases", FunctionName=args.name)
    if args.json:
        emit_json({"versions": versions, "aliases": aliases})
        return 0
    render_versions(versions, aliases)
    return 0


# --- alias ----------------------------------------------------------------------------------

def parse_weight(text: str) -> tuple[str, float]:
    """--weight V=W: version V gets the share W of the calls (0.0 to 1.0, or a percentage)."""
    match = WEIGHT_RE.match(text.strip())
    try:
        weight = float(match.group("weight")) if match else None
    except ValueError:
        weight = None
    if weight is not None and match.group("percent"):
        weight /= 100
    if weight is None or not 0.0 <= weight <= 1.0:
        raise CliError(f"--weight: expected VERSION=WEIGHT with a published version and a "
                       f"share from 0.0 to 1.0 (or 0% to 100%), such as 2=0.1; got {text!r}", 2)
    return match.group("version"), weight


def alias_line(name: str, alias: dict) -> str:
    weights = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
    target = alias["FunctionVersion"]
    if weights:
        other = sum(weights.values())
        target = f"version {target} ({percent(1 - other)}), " + ", ".join(
            f"version {v} ({percent(w)})" for v, w in weights.items())
    else:
        target = f"version {target}"
    return f"{name}:{alias['Name']} -> {target}"


def cmd_alias(args) -> int:
    routing = {"AdditionalVersionWeights": dict(parse_weight(w) for w in args.weight or [])}
    if len(routing["AdditionalVersionWeights"]) < len(args.weight or []):
        raise CliError("--weight: one share per version", 2)
    if args.version in routing["AdditionalVersionWeights"]:
        raise CliError(f"--weight: version {args.version} is the alias's own version; the "
                       "weight is for the other one", 2)
    host = Host.from_args(args)
    client = lambda_client(args, host)
    extra = {"Description": args.description} if args.description is not None else {}
    with api_errors(host.url):
        try:
            client.get_alias(FunctionName=args.name, Name=args.alias)
            exists = True
        except client.exceptions.ResourceNotFoundException:
            exists = False
        # Without --weight an existing alias's routing is removed: the alias names
        # VERSION alone, as the command line says.
        call = client.update_alias if exists else client.create_alias
        alias = call(FunctionName=args.name, Name=args.alias, FunctionVersion=args.version,
                     RoutingConfig=routing, **extra)
    alias.pop("ResponseMetadata", None)
    if args.json:
        emit_json({**alias, "created": not exists})
        return 0
    print(("created " if not exists else "") + alias_line(args.name, alias))
    return 0


def cmd_rollback(args) -> int:
    """The alias back to the version it named before its last move (the host keeps it:
    GetAlias's PreviousVersion), with no weights: a rollback is all calls on one version."""
    host = Host.from_args(args)
    client = lambda_client(args, host)
    with api_errors(host.url):
        current, raw = raw_answer(client, "GetAlias", FunctionName=args.name, Name=args.alias)
        previous = raw.get(PREVIOUS_VERSION)
        if not previous:
            raise CliError(f"rollback: {args.name}:{args.alias} has not moved since it was "
                           f"created (it names version {current['FunctionVersion']}); "
                           f"nothing to go back to", 1)
        alias = client.update_alias(FunctionName=args.name, Name=args.alias,
                                    FunctionVersion=previous,
                                    RoutingConfig={"AdditionalVersionWeights": {}})
    alias.pop("ResponseMetadata", None)
    if args.json:
        emit_json({**alias, "from": current["FunctionVersion"]})
        return 0
    print(f"{args.name}:{args.alias}: version {current['FunctionVersion']} -> "
          f"{alias['FunctionVersion']}")
    return 0


# --- reload ---------------------------------------------------------------------------------

def render_reload(report: dict) -> None:
    functions = report.get("functions") or {}
    rows = [[name, info.get("action"), shown(info.get("reason") or "")]
            for name, info in sorted(functions.items())]
    table(rows, ["NAME", "ACTION", "REASON"])
    if report.get("needsRestart"):
        print("needs restart (changed in host-config.yaml, read only at start): " +
              ", ".join(report["needsRestart"]))
    for error in report.get("errors") or []:
        print(f"error: {shown(error)}")


def reload_failed(report: dict) -> bool:
    return bool(report.get("errors")) or any(
        info.get("action") == "failed" for info in (report.get("functions") or {}).values())


def cmd_reload(args) -> int:
    body = {"functions": args.function or None, "setup": args.setup}
    report = Host.from_args(args).call("POST", RELOAD_PATH, json.dumps(body).encode(),
                                       {"Content-Type": "application/json"}).json()
    if args.json:
        emit_json(report)
    else:
        render_reload(report)
    if reload_failed(report):
        if not args.json:
            print("sora: the reload failed for some functions: they keep serving their "
                  "previous code", file=sys.stderr)
        return 1
    return 0


# --- parser ---------------------------------------------------------------------------------

def add_commands(command) -> None:
    """The commands of this module, with `command(name, func, text)` from main.parser()."""
    def signed(cmd):
        cmd.add_argument("--key-name", help="the API key's name, its access key id for the "
                         "signed management API (default: $SORA_API_KEY_NAME, else the name "
                         "the host config gives the key, else $AWS_ACCESS_KEY_ID)")
        return cmd

    cmd = signed(command("deploy", cmd_deploy, "create or update a function from a folder "
                         "(its sora.yaml and files) through the host's Lambda management API"))
    cmd.add_argument("dir", help="the function folder")
    cmd.add_argument("--name", help="deploy it under this name (default: sora.yaml's name)")
    cmd.add_argument("--publish", action="store_true",
                     help="then publish a version and print its number")
    cmd.add_argument("--description", help="the function's description when it is created, "
                     "and the published version's")
    cmd = signed(command("versions", cmd_versions,
                         "list a function's versions and the aliases naming them"))
    cmd.add_argument("name")
    cmd = signed(command("alias", cmd_alias, "create or move an alias to VERSION, "
                         "optionally sending a share of its calls to another version"))
    cmd.add_argument("name")
    cmd.add_argument("alias")
    cmd.add_argument("version", help="a published version number, or $LATEST")
    cmd.add_argument("--weight", action="append", metavar="V=W",
                     help="send the share W (0.0-1.0, or a percentage) of the alias's calls "
                     "to version V")
    cmd.add_argument("--description")
    cmd = signed(command("rollback", cmd_rollback,
                         "move an alias back to the version it named before"))
    cmd.add_argument("name")
    cmd.add_argument("alias")
    cmd = command("reload", cmd_reload, "re-read host-config.yaml and every sora.yaml and "
                  "switch what changed without a restart; prints what each function did")
    cmd.add_argument("--function", "-f", action="append", metavar="NAME",
                     help="reload only this function (repeatable; default: all)")
    cmd.add_argument("--setup", choices=SETUP_CHOICES, default="auto",
                     help="run setup when the folder changed (auto), never (skip) or always "
                     "(force)")
