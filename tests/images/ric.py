"""AWS's runtime interface clients, built or installed once per machine into a cache folder
outside the repository (~/.cache/sora-tests/ric/), keyed by their version and the
interpreter's, from which the image builds COPY them: `docker build` itself reaches no
network.

- aws-lambda-ric (npm) compiles native code (curl and aws-lambda-cpp, with autotools, cmake
  and g++: `make system-deps` installs them) for minutes on this 2-core machine.
- awslambdaric (PyPI) comes as a wheel: `pip install --target` for CPython 3.11 on this
  machine's glibc, whatever Python runs the tests.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NODE_RIC = "aws-lambda-ric"
NODE_RIC_VERSION = "3.3.0"   # the newest for Node.js 20 (4.x needs 22), as examples/node-ric
PYTHON_RIC = "awslambdaric"
PYTHON_RIC_VERSION = "4.2.2"   # as examples/python-ric
PYTHON_VERSION = "3.11"        # Debian's /usr/bin/python3.11, which sora-test/python3 carries
NPM_BUILD_TIMEOUT = 1800
NODE_RIC_RUNTIME = ("package.json", "bin", "dist", "LICENSE", "NOTICE", "THIRD-PARTY-LICENSES")


def node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def node_ric(cache: Path, node: str) -> Path:
    """A folder with node_modules/aws-lambda-ric: what of the package runs (bin/, dist/ with
    the compiled rapid-client.node, package.json, licences), built for `node`."""
    key = f"{NODE_RIC}-{NODE_RIC_VERSION}-node-{node_version(node)}"

    def install(into: Path) -> None:
        build = into / "build"
        build.mkdir()
        (build / "package.json").write_text(
            '{"name": "sora-test-ric", "version": "1.0.0", "private": true, '
            f'"dependencies": {{"{NODE_RIC}": "{NODE_RIC_VERSION}"}}}}\n')
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is missing: run `make system-deps`")
        # The install script compiles with node-gyp against this node's headers.
        env = {**os.environ, "PATH": f"{Path(node).parent}:{os.environ.get('PATH', '')}"}
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev",
                               "--no-package-lock", "--loglevel=error"], cwd=build, env=env,
                              capture_output=True, text=True, timeout=NPM_BUILD_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(f"npm install {NODE_RIC}@{NODE_RIC_VERSION} failed:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        # At run time the client loads only its dist/ (node's own modules and the addon): the
        # bundled sources of curl and aws-lambda-cpp (149 MB) and node-gyp stay out of images.
        built = build / "node_modules" / NODE_RIC
        kept = into / "node_modules" / NODE_RIC
        kept.mkdir(parents=True)
        for name in NODE_RIC_RUNTIME:
            if (built / name).is_dir():
                shutil.copytree(built / name, kept / name, symlinks=True)
            elif (built / name).exists():
                shutil.copy2(built / name, kept / name)
        if not (kept / "dist" / "rapid-client.node").is_file():
            raise RuntimeError(f"{NODE_RIC}'s native part was not built: {built}")
        shutil.rmtree(build)
    return _cached(cache / "ric" / key, install)


def python_ric(cache: Path) -> Path:
    """A folder to COPY into site-packages: awslambdaric and its dependencies for CPython 3.11."""
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1].replace(".", "_")
    key = f"{PYTHON_RIC}-{PYTHON_RIC_VERSION}-cp{PYTHON_VERSION.replace('.', '')}-glibc{glibc}"

    def install(into: Path) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-compile", "--target", str(into), "--only-binary=:all:",
             "--implementation", "cp", "--python-version", PYTHON_VERSION,
             *_platforms(glibc),
             f"{PYTHON_RIC}=={PYTHON_RIC_VERSION}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"pip install {PYTHON_RIC}=={PYTHON_RIC_VERSION} failed:\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        shutil.rmtree(into / "bin", ignore_errors=True)   # console scripts for the host's python
    return _cached(cache / "ric" / key, install)


def _platforms(glibc: str) -> list[str]:
    """pip's --platform for every manylinux tag this glibc runs (pip does not expand a
    manylinux_2_N platform to the older ones by itself)."""
    major, minor = (int(n) for n in glibc.split("_"))
    tags = [f"manylinux_{major}_{n}_x86_64" for n in range(minor, 4, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def _cached(folder: Path, install) -> Path:
    """`folder`, made by `install(tmp)` into a temporary sibling renamed into place (a build cut
    short leaves nothing that looks done), once: a lock beside it makes a second test session
    wait for the first's build instead of building beside it."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if folder.is_dir():
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
        try:
            install(tmp)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
