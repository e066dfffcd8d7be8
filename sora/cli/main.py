"""`sora`: drive a Sora host from a terminal.

    sora init NAME --language nodejs|python     a new function folder
    sora validate [PATH]                        a host config or a function folder
    sora dev [PATH] [--port N]                  serve the functions under PATH, reloading
                                                each one as its files change
    sora ls [--wide]                            functions, their state, instances, events;
                                                on a cluster, each host and what it serves
    sora invoke NAME [--data JSON|@FILE|-] [--async] [--log]
    sora invoke --local DIR [--data ...] [--log]    once, without a host
    sora logs NAME [--follow] [--request-id ID]
    sora invocations NAME [--status S] [--limit N]  its latest invocation records
    sora inspect REQUEST_ID
    sora dlq NAME [--replay [ID ...]] [--discard [ID ...]]
    sora keys [NAME] [--api NAME]               the host's API keys as AWS credentials
    sora keys init DIR                          this host's CURVE key pair for a cluster
    sora keys add DIR CERT_FILE [--name NAME]   allow another host's public certificate
    sora keys show DIR                          this host's public certificate and allow-list
    sora deploy DIR [--name NAME] [--publish]   create or update a function from a folder
    sora versions NAME                          its versions and the aliases naming them
    sora alias NAME ALIAS VERSION [--weight V=W]    create or move an alias
    sora rollback NAME ALIAS                    the alias back to the version it named before
    sora reload [--function NAME ...]           re-read the config and switch what changed
    sora triggers [NAME]                        schedules and file triggers: next fire times,
                                                what they watch, last firing and its status
    sora triggers fire NAME [INDEX] [--key K]   enqueue a firing now
    sora top [--interval 2] [--once]            a live view of each function's state,
                                                instances, calls, errors, p50/p99, cold
                                                starts and queues (q quits)

Tables for people, `--json` for scripts. Exit status: 0 success, 1 the function or the API
reported an error, 2 bad usage or configuration, 3 the host cannot be reached.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import shlex
import sys
import time

from .. import protocol as p
from ..cluster import keys as cluster_keys
from ..config import (FUNCTION_FILE, LANGUAGES, ConfigError, load_function_config,
                      load_host_config)
from .dev import cmd_dev
from .host import CliError, Host, config_path
from .manage import add_commands
from .top import add_commands as add_top_commands
from .triggers import add_commands as add_trigger_commands
from .output import ago, emit_json, shown, table, terminal_width, trigger_label

INVOKE_PATH = "/2015-03-31/functions/{}/invocations"


# --- output ---------------------------------------------------------------------------------

def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    stamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def short(text: str | None, width: int = 60) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def log_line(line: dict) -> str:
    # The whole id: a UUIDv7's first 8 characters are its time, the same for every call made
    # in the same ~65 s, and the whole id is what `sora inspect` and --request-id take.
    return (f"{when(line['time'])}  {line['requestId']}  {line['stream']:<6}  "
            f"{shown(line['line'])}")


# --- commands -------------------------------------------------------------------------------

def cmd_init(args) -> int:
    from .scaffold import scaffold
    directory = scaffold(args.name, args.language, args.dir)
    if args.json:
        emit_json({"directory": directory, "name": args.name, "language": args.language})
        return 0
    print(f"Created {directory}")
    print(f"  try it:   sora invoke --local {os.path.relpath(directory)} --data "
          "'{\"name\": \"Sora\"}'")
    print("  serve it: add the folder to functionPaths in your host-config.yaml")
    return 0


def cmd_validate(args) -> int:
    path = args.path or config_path(args.config) or "."
    if os.path.isdir(path):
        return _validate_function(path, args.json, not args.no_load)
    try:
        config = load_host_config(path)
    except ConfigError as exc:
        return _invalid(exc, args.json)
    broken = [{"name": b.name, "directory": b.directory, "reason": b.reason}
              for b in config.broken]
    return _report_loaded(config.path, config.functions, config.stateDir, broken, args.json,
                          not args.no_load)


def _validate_function(directory: str, as_json: bool, load: bool) -> int:
    try:
        fn = load_function_config(directory)
    except ConfigError as exc:
        return _invalid(exc, as_json)
    return _report_loaded(fn.source, [fn], None, [], as_json, load)


def _report_loaded(path: str, functions: list, state_dir: str | None, broken: list[dict],
                   as_json: bool, load: bool) -> int:
    """Load each function's module as its instances would (sora.runtimes.load_check;
    not with `load` false), so a syntax error or a missing handler is reported now, then
    print the lot."""
    from ..runtimes.load_check import LoadResult, check_functions
    from ..triggers.describe import describe_all, line
    now = time.time()
    valid = []
    checked = check_functions(functions, state_dir) if load else \
        [(fn, LoadResult(None, "not loaded: --no-load")) for fn in functions]
    for fn, loaded in checked:
        entry = {"name": fn.name, "language": fn.language, "directory": fn.directory}
        if loaded.broken:
            broken.append({**entry, "reason": loaded.reason})
        else:
            valid.append({**entry, "loaded": loaded.loaded is True,
                          **({"note": loaded.reason} if loaded.reason else {}),
                          "triggers": describe_all(fn, now)})
    if as_json:
        emit_json({"valid": not broken, "path": path, "functions": valid, "broken": broken})
    else:
        for f in valid:
            note = f"  ({f['note']})" if "note" in f else ""
            print(f"ok      {f['name']:<24} {f['language']:<8} {f['directory']}{note}")
            for trigger in f["triggers"]:
                if trigger["kind"] != "http" or len(f["triggers"]) > 1:
                    print(f"          {line(trigger)}")
        for b in broken:
            print(f"broken  {b['name']:<24} {b['reason']}")
        print(f"{path}: {len(valid)} function(s) valid, {len(broken)} broken")
    return 1 if broken else 0


def _invalid(exc: ConfigError, as_json: bool) -> int:
    if as_json:
        emit_json({"valid": False, "path": exc.path, "errors": [
            f"{exc.path}: {problem}" for problem in exc.problems]})
    else:
        print(f"sora: configuration error\n{exc}", file=sys.stderr)
    return 2


def is_cluster(hosts: dict) -> bool:
    """Whether `hosts` (/healthz's) shows more than this host alone: then `sora ls` shows each
    host and which hosts serve each function."""
    return len(hosts) > 1 or any(not info.get("local") for info in hosts.values())


def served(functions: dict) -> str:
    """A host's functions: `echo (2 workers, 3 instances, 1 in flight), ...`."""
    parts = []
    for name, info in sorted(functions.items()):
        info = info if isinstance(info, dict) else {}
        counts = [f"{info[key]} {label}" for key, label in (
            ("workers", "workers"), ("instances", "instances"), ("inFlight", "in flight"))
            if info.get(key) is not None]
        parts.append(f"{name} ({', '.join(counts)})" if counts else name)
    return ", ".join(parts) or "-"


def render_ls(body: dict, wrap_at: int | None, now: float) -> None:
    """`sora ls`'s tables from /api/functions: the functions, and on a cluster a HOSTS column
    (the hosts serving each function) and a table of the hosts (name, address, state, last
    heard, what each serves)."""
    hosts = body.get("hosts") or {}
    cluster = is_cluster(hosts)
    rows = []
    for f in body["functions"]:
        events = f.get("events") or {}
        row = [f["name"], f.get("state"), f.get("instances"), f.get("language"),
               events.get("queued"), events.get("leased"), events.get("dead")]
        if cluster:
            row.append(",".join(f.get("hosts") or ()) or "-")
        rows.append([*row, shown(f.get("reason") or "")])
    headers = ["NAME", "STATE", "INSTANCES", "LANGUAGE", "QUEUED", "RUNNING", "DEAD"]
    table(rows, [*headers, *(["HOSTS"] if cluster else []), "REASON"], wrap_at=wrap_at)
    if not cluster:
        return
    print()
    rows = []
    for name, info in sorted(hosts.items(), key=lambda item: (not item[1].get("local"),
                                                                 item[0])):
        state = info.get("state") or ("local" if info.get("local") else None)
        rows.append([shown(name) + (" (this host)" if info.get("local") else ""),
                     shown(info.get("address")), shown(state),
                     "-" if info.get("local") else ago(info.get("lastHeard"), now),
                     shown(served(info.get("functions") or {}))])
    table(rows, ["HOST", "ADDRESS", "STATE", "LAST HEARD", "FUNCTIONS"], wrap_at=wrap_at)


def cmd_ls(args) -> int:
    body = Host.from_args(args).get_json("/api/functions")
    if args.json:
        emit_json(body)
        return 0
    render_ls(body, None if args.wide else terminal_width(), time.time())
    return 0


def read_data(value: str | None) -> bytes:
    """--data: JSON text, @file, or - for standard input; checked to be JSON."""
    if value is None:
        return b"{}"
    if value == "-":
        data = sys.stdin.buffer.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise CliError(f"--data {value}: cannot read the file ({exc.strerror})", 2) \
                from None
    else:
        data = value.encode()
    try:
        json.loads(data)
    except ValueError as exc:
        raise CliError(f"--data: expected a JSON event, got invalid JSON ({exc})", 2) from None
    return data


def _show_result(request_id: str, status_code: int, function_error: str | None, body: bytes,
                 log_b64: str | None, as_json: bool) -> int:
    log_text = base64.b64decode(log_b64).decode("utf-8", "replace") if log_b64 else None
    try:
        payload = json.loads(body) if body else None
        text = json.dumps(payload, indent=2)
    except ValueError:
        payload = text = body.decode("utf-8", "replace")
    if as_json:
        out = {"requestId": request_id, "statusCode": status_code,
               "functionError": function_error, "payload": payload}
        if log_text is not None:
            out["log"] = log_text
        emit_json(out)
    else:
        if log_text:
            sys.stderr.write(log_text if log_text.endswith("\n") else log_text + "\n")
        print(text)
        if function_error:
            print(f"sora: the function failed (request {request_id})", file=sys.stderr)
    return 1 if function_error else 0


def cmd_invoke(args) -> int:
    data = read_data(args.data)
    if args.local:
        if args.async_:
            raise CliError("--local runs the function once, now: it cannot be --async", 2)
        from .local import invoke_local
        status, body, tail = invoke_local(args.local, data)
        failed = None if status == p.OK else "Unhandled"
        return _show_result("local", 200, failed, body, tail.decode() if args.log else None,
                            args.json)
    if not args.name:
        raise CliError("invoke: expected a function NAME (or --local DIR)", 2)
    host = Host.from_args(args)
    headers = {"Content-Type": "application/json",
               "X-Amz-Invocation-Type": "Event" if args.async_ else "RequestResponse"}
    if args.log and not args.async_:
        headers["X-Amz-Log-Type"] = "Tail"
    resp = host.call("POST", INVOKE_PATH.format(args.name), data, headers)
    request_id = resp.headers.get("x-amzn-requestid", "")
    if args.async_:
        if args.json:
            emit_json({"requestId": request_id, "status": "queued"})
        else:
            print(f"queued {request_id}")
        return 0
    return _show_result(request_id, resp.status, resp.headers.get("x-amz-function-error"),
                        resp.body, resp.headers.get("x-amz-log-result"), args.json)


def cmd_logs(args) -> int:
    host = Host.from_args(args)
    path = f"/api/functions/{args.name}/logs"
    params = {"requestId": args.request_id, "limit": args.limit}
    if not args.follow:
        lines = host.get_json(path, params)["lines"]
        for line in lines:
            print(json.dumps(line) if args.json else log_line(line))
        return 0
    with host.open("GET", path, params={**params, "follow": "true"}, timeout=3600) as stream:
        try:
            for raw in stream:
                if raw.strip():
                    line = json.loads(raw)
                    print(json.dumps(line) if args.json else log_line(line), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_invocations(args) -> int:
    body = Host.from_args(args).get_json(f"/api/functions/{args.name}/invocations",
                                         {"status": args.status, "limit": args.limit})
    if args.json:
        emit_json(body)
        return 0
    rows = [[item["requestId"], when(item.get("start")), trigger_label(item), item["status"],
             f"{item['durationMs']:.0f} ms" if "durationMs" in item else None,
             shown(short(f"{item['errorType']}: {item.get('errorMessage') or ''}"
                         if item.get("errorType") else "", 60))]
            for item in body["invocations"]]
    table(rows, ["REQUEST ID", "START", "TRIGGER", "STATUS", "DURATION", "ERROR"])
    return 0


def cmd_inspect(args) -> int:
    item = Host.from_args(args).get_json(f"/api/invocations/{args.request_id}")
    if args.json:
        emit_json(item)
        return 0
    fields = [("request id", item["requestId"]), ("function", item["function"]),
              ("status", item["status"]), ("trigger", trigger_label(item)),
              ("version", item.get("version")), ("start", when(item.get("start"))),
              ("duration", f"{item['durationMs']} ms" if "durationMs" in item else None),
              ("max memory used", f"{item['maxMemoryUsedMB']} MB"
               if "maxMemoryUsedMB" in item else None),
              ("init duration", f"{item['initDurationMs']} ms"
               if "initDurationMs" in item else None),
              ("cold start", item.get("cold")), ("error type", item.get("errorType")),
              ("error message", item.get("errorMessage"))]
    event = item.get("event")
    if event:
        fields += [("event state", event["state"]), ("attempts", event["attempts"]),
                   ("accepted", when(event["accepted"])),
                   ("dead-letter reason", event.get("deadReason"))]
    for label, value in fields:
        if value is not None:
            # A multi-line value (an error message) continues under its first line, not
            # at the margin where it would read as the next field.
            print(f"{label + ':':<20}" +
                  shown(str(value), newlines=True).replace("\n", "\n" + " " * 20))
    for n, error in enumerate((event or {}).get("errors", []), 1):
        print(f"{'error ' + str(n) + ':':<20}{shown(error['errorType'])}: "
              f"{shown(short(error['errorMessage'], 100))}")
    if item.get("logs"):
        print("logs:")
        for line in item["logs"]:
            print("  " + log_line(line))
    return 0


def cmd_dlq(args) -> int:
    host = Host.from_args(args)
    path = f"/api/functions/{args.name}/dlq"
    if args.replay is not None:
        body = json.dumps({"requestIds": args.replay}).encode() if args.replay else None
        result = host.call("POST", path + "/replay", body,
                           {"Content-Type": "application/json"}).json()
        if args.json:
            emit_json(result)
        else:
            print(f"replayed {len(result['replayed'])} event(s)")
            for rid in result["replayed"]:
                print(f"  {rid}")
        return 0
    if args.discard is not None:
        result = host.call("DELETE", path, params={"requestId": args.discard or None}).json()
        if args.json:
            emit_json(result)
        else:
            print(f"discarded {result['discarded']} event(s)")
        return 0
    events = host.get_json(path, {"limit": args.limit})["events"]
    if args.json:
        emit_json({"events": events})
        return 0
    rows = []
    for e in events:
        last = e["errors"][-1] if e["errors"] else None
        rows.append([e["requestId"], when(e["accepted"]), trigger_label(e), e["attempts"],
                     e["deadReason"],
                     shown(short(f"{last['errorType']}: {last['errorMessage']}" if last else "",
                                 60))])
    table(rows, ["REQUEST ID", "ACCEPTED", "TRIGGER", "ATTEMPTS", "REASON", "LAST ERROR"])
    return 0


CLUSTER_KEYS_COMMANDS = ("init", "add", "show")


def cmd_keys(args) -> int:
    """`sora keys init|add|show DIR ...`: a cluster keys folder; otherwise the API keys. The
    words init, add and show come first: an API key with such a name is printed with
    `sora keys --api NAME`."""
    words = args.words
    if words and words[0] in CLUSTER_KEYS_COMMANDS:
        return cmd_cluster_keys(args, words[0], words[1:])
    if len(words) > 1:
        raise CliError(f"keys: expected at most one API key name, or one of "
                       f"{', '.join(CLUSTER_KEYS_COMMANDS)} first; got {' '.join(words)}", 2)
    if args.api and words:
        raise CliError("keys: expected the API key's name either as NAME or with --api", 2)
    args.name = args.api or (words[0] if words else None)
    return cmd_api_keys(args)


def cmd_cluster_keys(args, command: str, rest: list[str]) -> int:
    usage = {"init": "DIR", "add": "DIR CERT_FILE [--name NAME]", "show": "DIR"}[command]
    if len(rest) != (2 if command == "add" else 1):
        raise CliError(f"keys {command}: expected {usage}, got {' '.join(rest) or 'nothing'}", 2)
    if args.name and command != "add":
        raise CliError(f"keys {command}: --name belongs to `keys add`", 2)
    try:
        if command == "init":
            ring = cluster_keys.init_keys(rest[0])
        elif command == "add":
            target = cluster_keys.add_allowed(rest[0], rest[1], args.name)
            ring = cluster_keys.load_keys(rest[0])
        else:
            ring = cluster_keys.load_keys(rest[0])
    except cluster_keys.KeysError as exc:
        raise CliError(f"keys {command}: {exc}", 2) from None
    cert = os.path.join(ring.directory, cluster_keys.HOST_CERT)
    allowed = ring.allowed_keys()
    if args.json:
        emit_json({"directory": ring.directory, "publicCertificate": cert,
                   "publicKey": ring.public_text,
                   "allowed": {n: key.decode() for n, key in allowed.items()}})
        return 0
    if command == "add":
        print(f"allowed: {target}")
        return 0
    print(f"public certificate: {cert}")
    print(f"public key:         {ring.public_text}")
    if command == "init":
        print(f"Give {cert} to the other hosts (`sora keys add THEIR_DIR {cert} --name NAME`);"
              " never the .key_secret beside it.")
    else:
        table([[n, key.decode()] for n, key in allowed.items()], ["ALLOWED", "PUBLIC KEY"])
    return 0


def cmd_api_keys(args) -> int:
    """The host config's API keys as AWS credential pairs (a key's name is its access key id,
    the key its secret access key; sora.gateway.sigv4). Read from the config, not the host:
    whoever can read the key files can run this."""
    path = config_path(args.config)
    if path is None:
        raise CliError("keys: expected the host config (--config, $SORA_CONFIG or "
                       "./host-config.yaml), whose auth.apiKeys holds the keys", 2)
    try:
        config = load_host_config(path, read_functions=False)
    except ConfigError as exc:
        return _invalid(exc, args.json)
    keys = [k for k in config.apiKeys if args.name in (None, k.name)]
    if args.name and not keys:
        raise CliError(f"keys: no key named {args.name!r} in {config.path} auth.apiKeys "
                       f"(its keys: {', '.join(k.name for k in config.apiKeys) or 'none'})", 2)
    if args.json:
        emit_json({"keys": [{"name": k.name, "scopes": list(k.scopes), "accessKeyId": k.name,
                             "secretAccessKey": k.secret} for k in keys]})
        return 0
    if not keys:
        print(f"{config.path}: no auth.apiKeys, so every route is open and any AWS "
              "credentials work")
        return 0
    if args.name:
        # For `eval "$(sora keys NAME)"`: boto3, the AWS CLI and the JavaScript SDK read these.
        key = keys[0]
        url = Host.from_args(args).url
        # A session token left from real AWS credentials would be sent along; Sora has none.
        print("unset AWS_SESSION_TOKEN")
        for name, value in (("AWS_ACCESS_KEY_ID", key.name),
                            ("AWS_SECRET_ACCESS_KEY", key.secret),
                            ("AWS_REGION", os.environ.get("AWS_REGION", "us-east-1")),
                            ("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
                            ("AWS_ENDPOINT_URL", url), ("SORA_API_KEY", key.secret)):
            print(f"export {name}={shlex.quote(value)}")
        # So that `sora deploy`, `sora reload`, ... find this host (its address, certificate
        # and key name) from any folder, not only from the config's.
        if args.host or os.environ.get("SORA_HOST"):
            print(f"export SORA_HOST={shlex.quote(url)}")
        print(f"export SORA_CONFIG={shlex.quote(os.path.abspath(config.path))}")
        return 0
    table([[k.name, k.secret, ",".join(k.scopes)] for k in keys],
          ["ACCESS KEY ID (NAME)", "SECRET ACCESS KEY (KEY)", "SCOPES"])
    return 0


# --- parser ---------------------------------------------------------------------------------

# The options every command takes (parser()'s `common`); they follow the command's name.
COMMON_OPTIONS = ("--json", "--host", "--config", "-c", "--api-key", "--cacert", "--insecure",
                  "-k", "--timeout")
FLAGS = ("--json", "--insecure", "-k")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    common.add_argument("--host", help="the host's address, e.g. http://127.0.0.1:8080 "
                        "(default: $SORA_HOST, else from the host config)")
    common.add_argument("--config", "-c", help="the host config to find the host in "
                        "(default: $SORA_CONFIG, else ./host-config.yaml)")
    common.add_argument("--api-key", help="API key (default: $SORA_API_KEY)")
    common.add_argument("--cacert", help="CA certificate for an HTTPS host")
    common.add_argument("--insecure", "-k", action="store_true",
                        help="do not verify an HTTPS host's certificate")
    common.add_argument("--timeout", type=float, default=960.0,
                        help="seconds to wait for the host (default 960)")
    # The common options belong to each command (`sora ls --json`): on both levels, the
    # command's defaults would overwrite what was given before it.
    top = argparse.ArgumentParser(prog="sora", description="Drive a Sora host.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, text):
        cmd = sub.add_parser(name, help=text, description=text, parents=[common])
        cmd.set_defaults(func=func)
        return cmd

    cmd = command("init", cmd_init, "create a function folder that runs as it is")
    cmd.add_argument("name")
    cmd.add_argument("--language", "-l", choices=[k for k in LANGUAGES if k != "provided"],
                     default="nodejs")
    cmd.add_argument("--dir", default=".", help="where to create the folder (default .)")
    cmd = command("validate", cmd_validate,
                  f"check a host config or a function folder ({FUNCTION_FILE})")
    cmd.add_argument("path", nargs="?", help="host-config.yaml or a function folder "
                     "(default: the host config, else .)")
    cmd.add_argument("--no-load", action="store_true", help="check the config only: do not "
                     "load each function's module (in its sandbox) to find load errors")
    cmd = command("dev", cmd_dev, "serve the function folders under PATH (PATH itself, or "
                  "its subfolders that hold a sora.yaml) in the foreground, with watch mode: "
                  "a saved file reloads its function. The host config and state go in "
                  "PATH/.sora, or, when PATH is itself a function folder, in "
                  "~/.cache/sora/dev/NAME-HASH ($XDG_CACHE_HOME); plain HTTP on 127.0.0.1 "
                  "without API keys. Ctrl-C stops it")
    cmd.add_argument("path", nargs="?", help="a function folder or a folder of them "
                     "(default .)")
    cmd.add_argument("--port", "-p", type=int, help="HTTP port (default 8080 if free, else "
                     "any free port; 0: any free port)")
    cmd.add_argument("--bind", default="127.0.0.1", help="address to listen on "
                     "(default 127.0.0.1)")
    cmd.add_argument("--state-dir", help="where the host config and state go (default: "
                     "see above)")
    cmd = command("ls", cmd_ls, "list functions: state, instances, queued and dead events; "
                  "on a cluster, the hosts")
    cmd.add_argument("--wide", action="store_true",
                     help="one line per function: the reason is not wrapped to the terminal")
    cmd = command("invoke", cmd_invoke, "invoke a function and print its result")
    cmd.add_argument("name", nargs="?")
    cmd.add_argument("--data", "-d", help="the event: JSON, @file, or - for standard input")
    cmd.add_argument("--async", dest="async_", action="store_true",
                     help="queue it as an asynchronous event (202) and print its request id")
    cmd.add_argument("--log", action="store_true",
                     help="also print the invocation's log (its last 4 KB)")
    cmd.add_argument("--local", metavar="DIR",
                     help="run the function in DIR once, without a host")
    cmd = command("logs", cmd_logs, "print a function's log lines")
    cmd.add_argument("name")
    cmd.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    cmd.add_argument("--request-id", help="only this invocation's lines")
    cmd.add_argument("--limit", type=int, default=1000)
    cmd = command("invocations", cmd_invocations, "list a function's invocation records, "
                  "newest first: trigger (http, event, schedule:N, file:N), status, duration")
    cmd.add_argument("name")
    cmd.add_argument("--status", choices=["ok", "error", "timeout", "crashed"])
    cmd.add_argument("--limit", type=int, default=20)
    cmd = command("inspect", cmd_inspect, "show one invocation: its record, event and logs")
    cmd.add_argument("request_id")
    cmd = command("dlq", cmd_dlq, "list, replay or discard a function's dead-lettered events")
    cmd.add_argument("name")
    cmd.add_argument("--replay", nargs="*", metavar="ID",
                     help="queue these events again (all when no ID is given)")
    cmd.add_argument("--discard", nargs="*", metavar="ID",
                     help="delete these events for good (all when no ID is given)")
    cmd.add_argument("--limit", type=int, default=50)
    cmd = command("keys", cmd_keys, "print the host config's API keys as AWS credentials "
                  "(access key id: the key's name; secret access key: the key); with NAME, "
                  "as shell exports for eval. `keys init DIR`, `keys add DIR CERT_FILE "
                  "[--name NAME]` and `keys show DIR` manage a cluster keys folder (CURVE)")
    cmd.add_argument("words", nargs="*", metavar="NAME | init DIR | add DIR CERT_FILE | show DIR")
    cmd.add_argument("--api", metavar="NAME", help="the API key of this name (for a key named "
                     "init, add or show)")
    cmd.add_argument("--name", help="keys add: the name the certificate gets in the "
                     "allow-list (default: its file name)")
    add_commands(command)
    add_trigger_commands(command)
    add_top_commands(command)
    return top


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    option = words[0].split("=")[0] if words else ""
    if option in COMMON_OPTIONS:
        # argparse would say only "invalid choice: 'http://…'" for `sora --host URL ls`.
        given = words[:1 if option in FLAGS or "=" in words[0] else 2]
        print(f"sora: {option} goes after the command: sora COMMAND {' '.join(given)} "
              "(e.g. sora ls --host http://127.0.0.1:8080)", file=sys.stderr)
        return 2
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"sora: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
