"""The container's entrypoint: prepare what Kubernetes mounts the way Sora expects it, then exec
`sora-supervisor`.

    entrypoint.py start     a main host (gateways, dispatcher, recorder, its own workers)
    entrypoint.py join      a joined host (workers only), joining cluster.controlPlane
    entrypoint.py CMD ...   any other command, run as it is (`sora keys init /tmp/k`, `sh`)

Two things Kubernetes cannot give Sora as it needs them:
- **The host config with the pod's own address.** A joined host's `cluster.advertise` must be
  the address the main host's gateways reach this pod at, its IP, known only when the pod
  starts. So the config is a template ($SORA_CONFIG_TEMPLATE, from a ConfigMap) in which each
  `${NAME}` is replaced by the environment variable NAME (the Downward API's POD_IP); an unset
  NAME stops the start with an error naming it. The result is written to $SORA_CONFIG (0600).
  Secrets do not go through it: the store's URL is read by Sora itself from the variable
  `store.urlEnv` names, so it is never written to a file.
- **A keys folder Sora accepts.** `cluster.keys` must be a 0700 folder with `host.key_secret`
  0600 and an `allowed/` folder (sora.cluster.keys.load_keys); a Secret volume is a folder of
  links into a world-readable one. So the Secret ($SORA_KEYS_SOURCE: `host.key`,
  `host.key_secret`, and each other host's certificate as `<name>.key`) is copied into
  $SORA_KEYS: the pair, and every certificate (this host's own included, as `sora keys init`
  does) into `allowed/`.
"""
from __future__ import annotations

import os
import re
import shutil
import sys

TEMPLATE = os.environ.get("SORA_CONFIG_TEMPLATE", "/etc/sora/host-config.yaml")
CONFIG = os.environ.get("SORA_CONFIG", "/var/lib/sora/host-config.yaml")
KEYS_SOURCE = os.environ.get("SORA_KEYS_SOURCE", "/run/secrets/sora/keys")
KEYS = os.environ.get("SORA_KEYS", "/var/lib/sora/keys")
SUPERVISOR = os.environ.get("SORA_SUPERVISOR", "/opt/sora/bin/sora-supervisor")

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StartError(Exception):
    """What stops the container before Sora starts; the message says what to fix."""


def render(text: str, env: dict[str, str], where: str) -> str:
    """`text` with each ${NAME} replaced by env[NAME]."""
    missing = sorted({m.group(1) for m in VARIABLE.finditer(text) if m.group(1) not in env})
    if missing:
        raise StartError(f"{where}: expected the environment variable(s) {', '.join(missing)} "
                         "to be set (the pod spec's env), for their ${NAME} in the template")
    return VARIABLE.sub(lambda m: env[m.group(1)], text)


def write_private(path: str, data: bytes, mode: int) -> None:
    """Write `path` afresh with `mode` (never through what was there)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def render_config(template: str, target: str, env: dict[str, str]) -> None:
    with open(template, encoding="utf-8") as fh:
        text = render(fh.read(), env, template)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    write_private(target, text.encode(), 0o600)


def copy_keys(source: str, target: str) -> list[str]:
    """The Secret's key pair and certificates as a keys folder; returns the allowed names."""
    pair = {name: os.path.join(source, name) for name in ("host.key", "host.key_secret")}
    for name, path in pair.items():
        if not os.path.isfile(path):
            raise StartError(f"{source}: expected {name} in the keys Secret (made with `sora keys "
                             "init`; see docs/deploy.md)")
    if os.path.isdir(target):
        shutil.rmtree(target)   # made afresh: a pod restarted with another Secret
    os.makedirs(os.path.join(target, "allowed"), mode=0o700)
    os.chmod(target, 0o700)
    with open(pair["host.key"], "rb") as fh:
        public = fh.read()
    with open(pair["host.key_secret"], "rb") as fh:
        write_private(os.path.join(target, "host.key_secret"), fh.read(), 0o600)
    write_private(os.path.join(target, "host.key"), public, 0o644)
    write_private(os.path.join(target, "allowed", "host.key"), public, 0o644)
    allowed = []
    for entry in sorted(os.listdir(source)):
        # A Secret volume also holds ..data and ..<timestamp> (its links' targets).
        if entry.startswith(".") or not entry.endswith(".key") or entry == "host.key":
            continue
        with open(os.path.join(source, entry), "rb") as fh:
            body = fh.read()
        if b"secret-key" in body:
            raise StartError(f"{source}/{entry}: expected another host's public certificate, "
                             "got a secret one (only host.key_secret may hold a secret key)")
        write_private(os.path.join(target, "allowed", entry), body, 0o644)
        allowed.append(entry[:-len(".key")])
    return allowed


def main(argv: list[str]) -> int:
    command = argv[1:] or ["start"]
    if command[0] not in ("start", "join"):
        os.execvp(command[0], command)
    try:
        if os.path.isdir(KEYS_SOURCE):
            allowed = copy_keys(KEYS_SOURCE, KEYS)
            print(f"entrypoint: keys from {KEYS_SOURCE} in {KEYS} (allowed: "
                  f"{', '.join(allowed) or 'none but this host'})", file=sys.stderr, flush=True)
        render_config(TEMPLATE, CONFIG, dict(os.environ))
    except (StartError, OSError) as exc:
        print(f"entrypoint: {exc}", file=sys.stderr, flush=True)
        return 2
    os.execv(SUPERVISOR, [SUPERVISOR, command[0], "--config", CONFIG, *command[1:]])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
