"""The test images' root file system builder (tests/images/rootfs.py): link chains and ldd's
libraries copied as on the host, and inputs whose listing changes when the host's files do
(so a changed host makes a new image tag)."""
from __future__ import annotations

import os
import shutil

from tests.images.rootfs import RootFs, libraries, link_chain


def test_link_chain_follows_file_links_with_folders_resolved(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "libx.so.1.2").write_text("x")
    (real / "libx.so.1").symlink_to("libx.so.1.2")
    (tmp_path / "alias").symlink_to("real")   # a folder link, as /lib -> usr/lib
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "libx.so").symlink_to(real / "libx.so.1")   # an absolute link
    chain = link_chain(str(tmp_path / "other" / "libx.so"))
    assert chain == [str(tmp_path / "other" / "libx.so"), str(real / "libx.so.1"),
                     str(real / "libx.so.1.2")]
    assert link_chain(str(tmp_path / "alias" / "libx.so.1")) == [str(real / "libx.so.1"),
                                                                 str(real / "libx.so.1.2")]


def test_libraries_of_sh_include_libc_and_the_loader():
    found = libraries([os.path.realpath(shutil.which("sh"))])
    assert any(os.path.basename(p).startswith("libc.so") for p in found), found
    assert any("ld-linux" in p for p in found), found
    assert all(p.startswith("/") for p in found)


def test_built_tree_has_the_executable_its_libraries_and_extra_files(tmp_path):
    fs = RootFs()
    fs.add_executable(shutil.which("sh"))
    fs.add_executable(shutil.which("cat"), at="/opt/tools/cat")
    fs.add_text("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    fs.add_link("/usr/bin/python3", "python3.11")
    fs.add_folder("/tmp", 0o1777)
    dest = tmp_path / "root"
    dest.mkdir()
    fs.build(dest)
    sh = link_chain(shutil.which("sh"))
    for path in sh:   # /usr/bin/sh -> dash, /usr/bin/dash: links kept as links
        assert os.path.lexists(dest / path.lstrip("/"))
        assert os.path.islink(dest / path.lstrip("/")) == os.path.islink(path)
    for library in libraries([os.path.realpath(shutil.which("sh"))]):
        assert (dest / os.path.realpath(library).lstrip("/")).is_file()
    assert (dest / "opt/tools/cat").is_file()
    assert (dest / "etc/passwd").read_text().startswith("root:")
    assert os.readlink(dest / "usr/bin/python3") == "python3.11"
    assert (dest / "tmp").stat().st_mode & 0o7777 == 0o1777
    for name in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{name}"):
            assert os.readlink(dest / name) == os.readlink(f"/{name}")


def test_inputs_change_when_a_host_file_changes(tmp_path):
    tree = tmp_path / "lib"
    tree.mkdir()
    (tree / "os.py").write_text("a = 1\n")
    (tree / "test").mkdir()
    (tree / "test" / "big.py").write_text("skipped\n")
    fs = RootFs()
    fs.add_tree(str(tree), skip=("test",))
    before = fs.files()
    assert all("big.py" not in path for path, _ in before)
    (tree / "test" / "big.py").write_text("skipped, changed\n")
    assert fs.files() == before   # a skipped file is not an input
    (tree / "os.py").write_text("a = 22\n")
    assert fs.files() != before
