"""The Docker create options of one container instance, from a FunctionConfig.

Everything here is the operator's (sora.yaml, the host config) or Sora's own: the function's
code, its setup and what they write never reach these options. The options are Docker's
low-level API's (`APIClient.create_container` and `create_host_config`), so a test can read
exactly what the engine is asked for.

What the container gets (docs/architecture.md, "Container instances"):
- a read-only root file system, a private `/tmp` tmpfs of `tmpSize` MB (mode 1777);
- no capability, `no-new-privileges`, the function's own unprivileged uid and gid (the one
  its sandbox would run as), Docker's default seccomp profile;
- `memory` MB as its memory limit with swap off (memswap = memory), 512 pids, a CPU share:
  an ordinary process's up to 1,769 MB, then in proportion to memory (`cpu_shares`);
- network mode `none`, or `host` with `network: true` (the engine here has no bridge);
- read-only bind mounts of what it runs, by `mounts` (a missing source is an error, never a
  folder dockerd makes): the function folder at `taskRoot`, Sora's runtime shims at
  `/opt/sora/runtimes`, the instance's channel folder (sora.containers.channel) at
  `/run/sora`, the secrets folder at `/run/sora-secrets`. Never the engine's socket.
"""
from __future__ import annotations


from ..config import FunctionConfig
from ..isolation.uids import sandbox_uid
from ..runtimes import base as runtimes_base
from .channel import WRAPPER, MOUNT_POINT
from .labels import labels as engine_labels

# Sora's runtime shims (the bootstrap files), mounted read-only into every container.
# Sora's runtime shims, bound read-only where the instance's argv looks for them
# (runtimes.base.shim_path).
RUNTIMES_DIR, RUNTIMES_MOUNT = runtimes_base.RUNTIMES_DIR, runtimes_base.CONTAINER_RUNTIMES
SECRETS_MOUNT = "/run/sora-secrets"
PIDS_LIMIT = 512
# Docker's cpu shares are relative weights against every other process of the host (1024 each,
# a default container's). A bubblewrap instance has no weight of its own, so a container never
# weighs less than one (a 128 MB function at Lambda's rate, 74, got half its sandboxed twin's
# throughput on a busy host: the isolation kind must not change what a function gets). Above
# 1,769 MB it weighs more, in proportion to its memory, as Lambda gives one vCPU per 1,769 MB.
MB_PER_CPU = 1769
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cpu_shares(memory_mb: int) -> int:
    return max(1024, memory_mb * 1024 // MB_PER_CPU)


def labels(fn: FunctionConfig, host_id: str, worker_pid: int) -> dict[str, str]:
    """Sora's labels (sora.containers.labels): how its sweeps find what it made."""
    return engine_labels(host_id, fn.name, worker_pid, "instance")


def mounts(fn: FunctionConfig, channel_dir: str, secrets_dir: str | None) -> list[dict]:
    """The bind mounts, all read-only (Docker's `Mounts` entries)."""
    binds = [(fn.directory, fn.taskRoot), (RUNTIMES_DIR, RUNTIMES_MOUNT),
             (channel_dir, MOUNT_POINT)]
    if secrets_dir is not None:
        binds.append((secrets_dir, SECRETS_MOUNT))
    return [{"Type": "bind", "Source": source, "Target": target, "ReadOnly": True,
             "BindOptions": {"Propagation": "rprivate"}} for source, target in binds]


def tmpfs(fn: FunctionConfig, image_volumes=()) -> dict[str, str]:
    """/tmp, and a tmpfs of the same cap over each VOLUME the image declares: the engine would
    otherwise give every container a writable anonymous volume on the host's disk, with no
    size limit, past the read-only root (and keep it after the container)."""
    options = f"rw,nosuid,nodev,size={fn.tmpSize}m,mode=1777"
    return {path: options for path in ("/tmp", *sorted(image_volumes or ()))}


def host_config(fn: FunctionConfig, channel_dir: str, secrets_dir: str | None,
                image_volumes=()) -> dict:
    memory = fn.memory * 1024 * 1024
    return {
        "Mounts": mounts(fn, channel_dir, secrets_dir),
        "ReadonlyRootfs": True,
        "Tmpfs": tmpfs(fn, image_volumes),
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Memory": memory,
        "MemorySwap": memory,   # swap off: memory + swap = memory
        "PidsLimit": PIDS_LIMIT,
        "CpuShares": cpu_shares(fn.memory),
        "NetworkMode": "host" if fn.network else "none",
        "Init": False,   # the runtime is pid 1: a kill of its host pid ends the container
        "AutoRemove": False,   # removed by Sora once its exit status was read
        "RestartPolicy": {"Name": "no"},
        "Privileged": False,
    }


def create_options(fn: FunctionConfig, argv: list[str], env: dict[str, str],
                   channel_dir: str, secrets_dir: str | None, host_id: str,
                   worker_pid: int, name: str, image_volumes=()) -> dict:
    """The body of `POST /containers/create` (and its `name`): the wrapper shell opens the
    channel's FIFOs and execs `argv` (sora.containers.channel.WRAPPER)."""
    uid = sandbox_uid(fn)
    if uid == 0:   # never root in a container (Sora not run as root: nobody)
        uid = 65534
    return {
        "name": name,
        "Image": fn.image,
        "Cmd": ["/bin/sh", "-c", WRAPPER, "sh", *argv],
        "Entrypoint": [],   # the image's own entrypoint does not wrap Sora's runtime
        "Env": [f"{key}={value}" for key, value in env.items()],
        "User": f"{uid}:{uid}",
        "WorkingDir": "/",
        "Labels": labels(fn, host_id, worker_pid),
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "OpenStdin": False, "Tty": False,
        "NetworkDisabled": not fn.network,
        "HostConfig": host_config(fn, channel_dir, secrets_dir, image_volumes),
    }
