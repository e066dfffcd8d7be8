"""The container tests' images, built on this machine with no registry (issue 20, point 5).

- `sora-test/node20`: the host's Node.js (`command -v node`) with /bin/sh, a few coreutils and
  every library they need, imported with `docker import` (Engine API).
- `sora-test/python3`: Debian's /usr/bin/python3.11 with /usr/lib/python3.11, the same way
  (not Sora's virtualenv, not pyenv: a Python whose standard library lives where it expects).
- `sora-test/node-ric`, `sora-test/python-ric`: Lambda container images, `docker build` (Engine
  API) of the Dockerfiles beside this file, `FROM` the bases above, with AWS's runtime interface
  clients (ric.py) as ENTRYPOINT and the handler as CMD, as such images are built `FROM` AWS's
  own base images.

`ensure_image(client, name)` returns a reference `name:<hash of the inputs>` (also tagged
`name:latest`), building it only when the engine has no image of that hash: a changed host
(another Node.js, a Python update) or a changed recipe makes a new one. Run this file to build
all four and print their references and build times:
`.venv/bin/python tests/images/build.py [--socket PATH]`.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import docker

if __package__ in (None, ""):   # run as a script: tests.images.* importable from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.images import ric  # noqa: E402
from tests.images.rootfs import RootFs, shared_objects  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sora-tests"
NODE20, PYTHON3 = "sora-test/node20", "sora-test/python3"
NODE_RIC, PYTHON_RIC = "sora-test/node-ric", "sora-test/python-ric"
DEBIAN_PYTHON = "/usr/bin/python3.11"
DEBIAN_PYTHON_LIB = "/usr/lib/python3.11"
# /bin/sh runs Sora's container command (design20: exec with redirections); the rest are for
# people and tests poking at a container.
TOOLS = ("sh", "cat", "ls", "env", "sleep", "mkdir", "rm", "id", "head", "echo", "true")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
GROUP = "root:x:0:\nnogroup:x:65534:\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"

_known: dict[tuple[str, str], str] = {}   # (data root, name) -> reference, for this process


def ensure_image(client: docker.DockerClient, name: str) -> str:
    """The reference of image `name` (one of the four above) in `client`'s engine, built first
    if the engine has none for the current inputs."""
    # Which engine, by its data root (where its images are): not the client's URL (every Unix
    # socket's is http+docker://localhost) nor the engine's ID (two dockerds on one machine
    # share /etc/docker/key.json, so a test session's own would be taken for the system's).
    key = (client.info()["DockerRootDir"], name)
    if key not in _known:
        _known[key] = _RECIPES[name](client)
    return _known[key]


def build_from_texts(client: docker.DockerClient, tag: str, files: dict[str, str],
                     buildargs: dict[str, str]) -> str:
    """`docker build` of a context made of `files` (name -> text, a Dockerfile among them),
    with no network (nothing is pulled here): a test's own image FROM one of ours."""
    import io
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in files.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    client.images.build(fileobj=io.BytesIO(context.getvalue()), custom_context=True, tag=tag,
                        buildargs=buildargs, rm=True, network_mode="none")
    return tag


def _node20(client) -> str:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run `make system-deps`")
    fs = _base_fs()
    # The host's node may live elsewhere (/usr/local/bin, a version manager's folder): the
    # image has it at /usr/bin/node whatever the host's path.
    fs.add_executable(node, at="/usr/bin/node")
    return _imported(client, NODE20, fs)


def _python3(client) -> str:
    fs = _base_fs()
    fs.add_executable(DEBIAN_PYTHON)
    fs.add_link("/usr/bin/python3", "python3.11")   # as Debian's python3 package makes it
    # The test suite, idle, ensurepip's bundled wheels and the static library are not needed
    # to run functions; everything else of the standard library is.
    fs.add_tree(DEBIAN_PYTHON_LIB, skip=("test", "ensurepip", "idlelib", "tkinter",
                                         "turtledemo", "config-3.11-x86_64-linux-gnu"))
    return _imported(client, PYTHON3, fs)


def _base_fs() -> RootFs:
    fs = RootFs()
    for tool in TOOLS:
        path = shutil.which(tool, path="/usr/bin:/bin")
        if path is None:
            raise RuntimeError(f"{tool} is not on this host (coreutils, dash)")
        fs.add_executable(path)
    fs.add_text("/etc/passwd", PASSWD)
    fs.add_text("/etc/group", GROUP)
    fs.add_text("/etc/nsswitch.conf", NSSWITCH)
    fs.add_folder("/tmp", 0o1777)
    fs.add_folder("/var/task")
    fs.add_folder("/root", 0o700)
    return fs


def _imported(client, name: str, fs: RootFs) -> str:
    """`docker import` of `fs` as `name:<hash>` (Engine API: POST /images/create?fromSrc=-)."""
    inputs = repr((fs.files(), _recipe_source()))
    ref = f"{name}:{_digest(inputs)}"
    with _build_lock():
        if _exists(client, ref):
            return _tag_latest(client, ref)
        with tempfile.TemporaryDirectory(prefix="sora-test-rootfs-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            fs.build(root)
            tar_path = Path(tmp) / "root.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(root, arcname=".", filter=_owned_by_root)
            repository, tag = ref.split(":")
            client.api.import_image(src=str(tar_path), repository=repository, tag=tag,
                                    changes=[f"ENV PATH={PATH}", "ENV LANG=C.UTF-8"])
        if not _exists(client, ref):
            raise RuntimeError(f"docker import did not make {ref}")
        return _tag_latest(client, ref)


def _node_ric(client) -> str:
    base = ensure_image(client, NODE20)
    runtime = ric.node_ric(CACHE, shutil.which("node"))
    return _built(client, NODE_RIC, HERE / "node-ric", base,
                  {"runtime": runtime / "node_modules"})


def _python_ric(client) -> str:
    base = ensure_image(client, PYTHON3)
    runtime = ric.python_ric(CACHE)
    return _built(client, PYTHON_RIC, HERE / "python-ric", base, {"runtime": runtime})


def _built(client, name: str, recipe: Path, base: str, copied: dict[str, Path]) -> str:
    """`docker build` (Engine API) of the Dockerfile in `recipe`, FROM `base`, with the folders
    `copied` (the RIC from its cache) and the libraries their native code needs (`libs/`) in
    its context: nothing is pulled, nothing reaches the network (network_mode none)."""
    native = RootFs()
    for folder in copied.values():
        native.add_libraries_of(shared_objects(folder))
    recipe_files = sorted(p for p in recipe.rglob("*") if p.is_file())
    inputs = repr((base, [(str(p.relative_to(recipe)), p.read_bytes()) for p in recipe_files],
                   [(k, _listing(v)) for k, v in sorted(copied.items())], native.files(),
                   _recipe_source()))
    ref = f"{name}:{_digest(inputs)}"
    with _build_lock():
        if _exists(client, ref):
            return _tag_latest(client, ref)
        with tempfile.TemporaryDirectory(prefix="sora-test-context-") as context:
            context = Path(context)
            shutil.copytree(recipe, context, dirs_exist_ok=True)
            for where, folder in copied.items():
                shutil.copytree(folder, context / where, symlinks=True)
            (context / "libs").mkdir()
            native.build(context / "libs")
            try:
                client.images.build(path=str(context), tag=ref, buildargs={"BASE": base},
                                    pull=False, rm=True, forcerm=True, network_mode="none")
            except docker.errors.BuildError as exc:
                log = "".join(str(line.get("stream", line.get("error", "")))
                              for line in exc.build_log)
                raise RuntimeError(f"docker build of {ref} failed: {exc}\n{log[-3000:]}") from exc
        return _tag_latest(client, ref)


def _listing(folder: Path) -> list:
    """A cached client folder as an input: its cache key (the folder's name: the client's and
    the interpreter's versions) and its files' paths and sizes, not where the cache is."""
    return [folder.parent.name if folder.name == "node_modules" else folder.name] + sorted(
        (str(p.relative_to(folder)), p.lstat().st_size) for p in folder.rglob("*"))


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _exists(client, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _tag_latest(client, ref: str) -> str:
    repository = ref.split(":")[0]
    client.api.tag(ref, repository, "latest")
    return ref


def _digest(inputs: str) -> str:
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def _recipe_source() -> str:
    """This recipe's own code: a changed builder makes new images."""
    return "".join((HERE / name).read_text() for name in ("build.py", "rootfs.py", "ric.py"))


class _build_lock:
    """One image build at a time on this machine (several test sessions may ask at once)."""

    def __enter__(self):
        CACHE.mkdir(parents=True, exist_ok=True)
        self._file = open(CACHE / "images.lock", "w")
        fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self._file.close()


_RECIPES = {NODE20: _node20, PYTHON3: _python3, NODE_RIC: _node_ric, PYTHON_RIC: _python_ric}
IMAGES = tuple(_RECIPES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", default="/var/run/docker.sock")
    parser.add_argument("--prune", action="store_true",
                        help="then remove the four images' other tags (earlier inputs)")
    parser.add_argument("names", nargs="*", default=list(IMAGES))
    args = parser.parse_args()
    client = docker.DockerClient(base_url=f"unix://{args.socket}", timeout=900)
    current = set()
    for name in args.names:
        started = time.monotonic()
        ref = ensure_image(client, name)
        current.add(ref)
        print(f"{ref}  {time.monotonic() - started:.1f} s", flush=True)
    if args.prune:
        prune(client, current)
    client.close()


def prune(client, keep: set[str]) -> None:
    """Remove the tags of these images made for earlier inputs (a host that changed, an
    earlier builder). Only by hand: another checkout's tests may use an older builder's tag;
    an image a container still uses is left (the engine refuses)."""
    for name in IMAGES:
        for image in client.images.list(name=name):
            for tag in image.tags:
                if tag in keep or tag.endswith(":latest"):
                    continue
                try:
                    client.images.remove(tag, noprune=False)
                    print(f"removed {tag}", flush=True)
                except docker.errors.APIError as exc:
                    print(f"kept {tag}: {exc.explanation}", flush=True)


if __name__ == "__main__":
    main()
