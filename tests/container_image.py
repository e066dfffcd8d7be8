"""A throwaway image for the container instance tests, until tests/images/build.py lands:
a root file system from the host's own Node.js (`command -v node`) and Debian's Python 3.11,
with /bin/sh and every library `ldd` lists, imported through the Engine API. Tagged with a
hash of its inputs, so it is built once per engine and rebuilt when the host changes."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

NAME = "sora-test-instance/runtimes"
PYTHON = "/usr/bin/python3.11"
PYLIB = "/usr/lib/python3.11"
SKIP = re.compile(r"/(test|tests|idlelib|tkinter|turtledemo|ensurepip|__pycache__|"
                  r"site-packages|dist-packages|lib2to3|pydoc_data)(/|$)")


def _libs(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return {m for m in re.findall(r"(/\S+)", out)}


def _inputs() -> tuple[list[str], str]:
    node = os.path.realpath(shutil.which("node"))
    files = {node, PYTHON, os.path.realpath("/bin/sh"), "/bin/cat"}
    for binary in list(files):
        files |= _libs(binary)
    for lib in ("/lib/x86_64-linux-gnu/libnss_files.so.2",):
        if os.path.exists(lib):
            files.add(lib)
    digest = hashlib.sha256()
    for path in sorted(files):
        st = os.stat(path)
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    digest.update(str(os.stat(PYLIB).st_mtime_ns).encode())
    return sorted(files), digest.hexdigest()[:12]


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    tar.addfile(info)


def ensure_image(client) -> str:
    files, tag = _inputs()
    ref = f"{NAME}:{tag}"
    try:
        client.images.get(ref)
        return ref
    except Exception:   # docker.errors.ImageNotFound
        pass
    with tempfile.TemporaryDirectory(prefix="sora-test-image-") as tmp:
        path = os.path.join(tmp, "rootfs.tar")
        with tarfile.open(path, "w", dereference=True) as tar:
            for d in ("tmp", "etc", "bin", "usr", "usr/bin", "var", "var/task", "run", "proc",
                      "dev", "sys"):
                _add_dir(tar, d, 0o1777 if d == "tmp" else 0o755)
            for f in files:
                tar.add(f, arcname=f.lstrip("/"), recursive=False)
            tar.add(os.path.realpath("/bin/sh"), arcname="bin/sh")
            node = os.path.realpath(shutil.which("node"))
            if node != "/usr/bin/node":
                tar.add(node, arcname="usr/bin/node")
            for root, dirs, names in os.walk(PYLIB):
                dirs[:] = [d for d in dirs if not SKIP.search(os.path.join(root, d))]
                for n in names:
                    full = os.path.join(root, n)
                    if not SKIP.search(full) and os.path.exists(full):
                        tar.add(full, arcname=full.lstrip("/"), recursive=False)
            link = tarfile.TarInfo("usr/bin/python3")
            link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
            tar.addfile(link)
            _add_bytes(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                          b"nobody:x:65534:65534:nobody:/:/bin/sh\n")
            _add_bytes(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
            _add_bytes(tar, "etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files\n")
        client.api.import_image_from_file(path, repository=NAME, tag=tag,
                                          changes=["ENV PATH=/usr/local/bin:/usr/bin:/bin"])
    return ref
