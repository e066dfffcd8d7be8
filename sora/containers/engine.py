"""The Docker Engine client: one per process per socket, the checks a containerized function's
worker makes at its start, and the sweep of the containers a worker or a host left.

Through the `docker` package (the Engine API over its Unix socket), never the CLI. Nothing
here is on the hot path: a warm instance is reached through its FIFOs, not through the engine.
Errors say what is wrong in the operator's words: no engine at the socket (and why: nothing
there, refused, not allowed), or an image that is not in the local engine (named).
"""
from __future__ import annotations

import logging
import os
import socket as socket_module
import stat
import threading

import docker
import docker.errors
import requests.exceptions

from . import labels as _labels
from .labels import host_id, labels

__all__ = ["DEFAULT_SOCKET", "EngineUnavailable", "ImageMissing", "client", "check", "forget",
           "host_id", "labels", "remove_containers", "shown_image", "unreachable_reason"]

log = logging.getLogger("sora.containers")
DEFAULT_SOCKET = "/var/run/docker.sock"
# How long the diagnosis of an unreachable socket waits for a connection.
_PROBE_TIMEOUT = 2.0

_clients: dict[str, docker.DockerClient] = {}
_clients_lock = threading.Lock()


class EngineUnavailable(Exception):
    """No Docker engine answers at the configured socket."""

    def __init__(self, socket: str, why: str):
        self.socket = socket
        self.why = why
        super().__init__(f"no Docker engine answers at {socket}: {why}")


class ImageMissing(Exception):
    """The function's image is not in the local engine (Sora pulls nothing)."""

    def __init__(self, image: str):
        self.image = image
        super().__init__(f"image {shown_image(image)!r} is not in the local Docker engine "
                         f"(docker images)")


def shown_image(image: str) -> str:
    """The image as the engine resolves it: a name without a tag or digest means `:latest`."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return image + ":latest"


def client(socket: str, timeout: float = 30) -> docker.DockerClient:
    """The process's client of the engine at `socket` (made once; the first call asks the
    engine its API version, so a socket with no engine raises EngineUnavailable here)."""
    with _clients_lock:
        found = _clients.get(socket)
        if found is not None:
            return found
        try:
            made = docker.DockerClient(base_url="unix://" + socket, timeout=timeout)
        except docker.errors.DockerException as exc:
            raise EngineUnavailable(socket, unreachable_reason(socket, exc)) from None
        _clients[socket] = made
        return made


def forget(socket: str) -> None:
    """Drop the cached client of `socket` (closing its connections)."""
    with _clients_lock:
        found = _clients.pop(socket, None)
    if found is not None:
        found.close()


def check(socket: str, image: str) -> dict:
    """Whether a containerized function can start: the engine answers and has `image`.
    Returns the image's Config (Entrypoint, Cmd, WorkingDir, Env, User); raises
    EngineUnavailable or ImageMissing."""
    engine = client(socket)
    try:
        engine.api.ping()
        found = engine.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        raise ImageMissing(image) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 404:
            raise ImageMissing(image) from None
        raise EngineUnavailable(socket, f"the engine refused: {exc.explanation or exc}") \
            from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        forget(socket)   # the engine went away since the client was made: ask afresh next time
        raise EngineUnavailable(socket, unreachable_reason(socket, exc)) from None
    return found.get("Config") or {}


def remove_containers(socket: str, host_id: str, worker_pid: int | None = None) -> int:
    """Force-remove every container this host created (`worker_pid`: that worker's only),
    running or not; the number removed. One another remover took first is not an error."""
    engine = client(socket)
    removed = 0
    try:
        found = engine.api.containers(all=True, filters={
            "label": _labels.selector(host_id, worker_pid)})
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise EngineUnavailable(socket, unreachable_reason(socket, exc)) from None
    for container in found:
        try:
            engine.api.remove_container(container["Id"], force=True, v=True)
            removed += 1
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # 409: its removal is already under way. Any other failure is logged and the sweep
            # goes on: one container the engine cannot remove must not keep the rest.
            if exc.status_code != 409:
                log.warning("could not remove container %s: %s", container["Id"][:12], exc)
    return removed


def unreachable_reason(socket: str, exc: BaseException | None = None) -> str:
    """Why nothing answers at `socket`, in a few words (the docker package's own message is
    a chain of wrapped exceptions)."""
    try:
        st = os.stat(socket)
    except FileNotFoundError:
        return "nothing at that path (is dockerd running? server.docker.socket names its socket)"
    except OSError as err:
        return f"cannot reach the path ({err.strerror})"
    if not stat.S_ISSOCK(st.st_mode):
        return "the path is not a socket"
    probe = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(socket)
    except ConnectionRefusedError:
        return "connection refused (no engine listens on that socket)"
    except PermissionError:
        return f"permission denied (Sora runs as uid {os.geteuid()})"
    except OSError as err:
        return err.strerror or str(err)
    finally:
        probe.close()
    return _root_cause(exc) if exc is not None else "it did not answer"


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of a wrapped exception, shortened."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
