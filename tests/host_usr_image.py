"""A test image that is almost nothing: the host's /usr is bound read-only into its containers.

For tests of the pieces around a container (the Runtime API listener, the adapter) that need a
real container with a shell and a Python, without building a root file system: the image holds
only the merged-/usr links (bin -> usr/bin, lib -> usr/lib, ...) and empty mount points, and
every container of it binds the host's /usr. The images with their own root file system and the
runtime interface clients are tests/images (built by `ensure_image`).
"""
from __future__ import annotations

import io
import tarfile

IMAGE = "sora-test/host-usr:1"
LINKS = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
FOLDERS = ("usr", "tmp", "etc", "proc", "sys", "dev", "run", "var/task")


def _tar() -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name in FOLDERS:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name, target in LINKS.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return data.getvalue()


def ensure(client) -> str:
    """The image's name, imported into the engine if it is not there yet."""
    import docker
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = IMAGE.split(":")
        client.api.import_image_from_data(_tar(), repository=repository, tag=tag)
    return IMAGE


def binds() -> dict:
    """The `volumes` argument of containers.create/run: the host's /usr, read-only."""
    return {"/usr": {"bind": "/usr", "mode": "ro"}}
