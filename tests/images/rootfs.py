"""A root file system assembled from the host's own files: executables and trees with every
shared library `ldd` lists for them, each at the path it has on the host, symlinks included
(so `/bin/sh -> dash`, `libstdc++.so.6 -> libstdc++.so.6.0.30` and the loader's own link all
resolve inside the image as on the host).

Planning and copying are separate: `files()` lists what would be copied, so a caller can hash
the inputs and skip the copy when an image of that hash exists.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# The top-level links of a merged-/usr Debian (/bin -> usr/bin, ...), made where the host has them.
TOP_LINKS = ("bin", "sbin", "lib", "lib64")


def libraries(paths: list[str]) -> list[str]:
    """Every shared library (and the loader) `ldd` lists for `paths` (executables or .so
    files), as the host paths ldd resolved. A library it cannot find is an error."""
    found: list[str] = []
    for i in range(0, len(paths), 64):
        done = subprocess.run(["ldd", *paths[i:i + 64]], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if "not found" in line:
                raise RuntimeError(f"ldd: a library is missing: {line.strip()}")
            if not line[:1].isspace():
                continue   # a "path:" header of ldd's output for several files
            words = line.split()
            if "=>" in words:
                target = words[words.index("=>") + 1]
                if target.startswith("/"):
                    found.append(target)
            elif words and words[0].startswith("/"):
                found.append(words[0])   # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
    return sorted(set(found))


def shared_objects(tree: str | Path) -> list[str]:
    """ELF shared objects (*.so*, *.node) below `tree`, for `libraries`."""
    found = []
    for folder, _dirs, names in os.walk(tree):
        for name in names:
            path = os.path.join(folder, name)
            if (".so" in name or name.endswith(".node")) and not os.path.islink(path):
                with open(path, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        found.append(path)
    return sorted(found)


def link_chain(path: str) -> list[str]:
    """`path` and every link on the way to the file it names, each with its folder resolved
    (so a folder link like /lib -> usr/lib is not part of it; TOP_LINKS stand for those)."""
    chain = []
    current = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    while True:
        chain.append(current)
        if not os.path.islink(current):
            return chain
        target = os.path.join(os.path.dirname(current), os.readlink(current))
        current = os.path.join(os.path.realpath(os.path.dirname(target)),
                               os.path.basename(target))


class RootFs:
    """A root file system being planned: `add_*` record host paths; `files()` lists them (for
    the inputs' hash); `build(dest)` copies them and writes the extra files."""

    def __init__(self):
        self._paths: set[str] = set()   # host files and links, each copied as itself
        self._trees: dict[str, tuple[str, ...]] = {}   # host folders copied whole, less names
        self._texts: dict[str, tuple[str, int]] = {}   # extra files: path -> (text, mode)
        self._folders: dict[str, int] = {}             # empty folders: path -> mode
        self._placed: dict[str, str] = {}              # image path -> host file copied there
        self._links: dict[str, str] = {}               # extra links: path -> target

    def add_executable(self, path: str, at: str | None = None) -> None:
        """An executable with its link chain (or, given `at`, the file it names put at that
        path of the image) and every library it needs."""
        if at is None:
            self._paths.update(link_chain(path))
        else:
            self._placed[at] = os.path.realpath(path)
        self.add_libraries_of([os.path.realpath(path)])

    def add_libraries_of(self, paths: list[str]) -> None:
        """The libraries (with their link chains) that executables or shared objects need."""
        for library in libraries(paths):
            self._paths.update(link_chain(library))

    def add_tree(self, path: str, skip: tuple[str, ...] = ()) -> None:
        """A host folder, whole (less the names in `skip`), and the libraries of its shared
        objects."""
        real = os.path.realpath(path)
        self._trees[real] = skip
        self.add_libraries_of([p for p in shared_objects(real)
                               if Path(p).relative_to(real).parts[0] not in skip])

    def add_text(self, path: str, text: str, mode: int = 0o644) -> None:
        self._texts[path] = (text, mode)

    def add_link(self, path: str, target: str) -> None:
        self._links[path] = target

    def add_folder(self, path: str, mode: int = 0o755) -> None:
        self._folders[path] = mode

    def files(self) -> list[tuple[str, str]]:
        """(path, what) for every input: a file's size and mtime, a link's target, an extra
        file's text and mode. Sorted, so its hash names the same inputs the same way."""
        listed = []
        for path in sorted(self._paths):
            listed.append((path, _describe(path)))
        for tree, skip in sorted(self._trees.items()):
            listed.append((tree, f"tree less {sorted(skip)}"))
            for folder, dirs, names in os.walk(tree):
                dirs[:] = sorted(d for d in dirs if d not in skip or folder != tree)
                for name in sorted(names):
                    path = os.path.join(folder, name)
                    listed.append((path, _describe(path)))
        for path, host in sorted(self._placed.items()):
            listed.append((path, f"from {host} {_describe(host)}"))
        for path, (text, mode) in sorted(self._texts.items()):
            listed.append((path, f"text {oct(mode)} {text!r}"))
        for path, target in sorted(self._links.items()):
            listed.append((path, f"link {target}"))
        for path, mode in sorted(self._folders.items()):
            listed.append((path, f"folder {oct(mode)}"))
        for name in TOP_LINKS:
            if os.path.islink(f"/{name}"):
                listed.append((f"/{name}", f"link {os.readlink(f'/{name}')}"))
        return listed

    def build(self, dest: Path) -> None:
        for name in TOP_LINKS:
            if os.path.islink(f"/{name}"):
                os.symlink(os.readlink(f"/{name}"), dest / name)
        for path in sorted(self._paths):
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(target):
                continue
            if os.path.islink(path):
                os.symlink(os.readlink(path), target)
            else:
                shutil.copy2(path, target)
        for path, host in self._placed.items():
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host, target)
        for tree, skip in self._trees.items():
            target = dest / tree.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            top = Path(tree)
            shutil.copytree(tree, target, symlinks=True, dirs_exist_ok=True,
                            ignore=lambda folder, names: [n for n in names if n in skip
                                                          and Path(folder) == top])
        for path, mode in self._folders.items():
            folder = dest / path.lstrip("/")
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(mode)   # mkdir's mode is cut by the umask (and /tmp needs its 1777)
        for path, (text, mode) in self._texts.items():
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(mode)
        for path, link_target in self._links.items():
            target = dest / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(target):
                os.symlink(link_target, target)


def _describe(path: str) -> str:
    if os.path.islink(path):
        return f"link {os.readlink(path)}"
    st = os.stat(path)
    return f"file {st.st_size} {st.st_mtime_ns} {oct(st.st_mode)}"
