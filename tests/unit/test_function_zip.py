"""The zip `sora deploy` uploads (issue 17 point 7): what the folder holds, less .git, .sora and
__pycache__; the same bytes for the same folder; no link followed; sizes checked first."""
from __future__ import annotations

import io
import os
import zipfile

import pytest

from sora.cli.function_zip import Limits, ZipRefused, build_zip


def folder(tmp_path, files: dict[str, str]):
    root = tmp_path / "fn"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def test_the_zip_holds_the_folder_less_what_is_never_the_function(tmp_path):
    root = folder(tmp_path, {"index.js": "x", "sora.yaml": "name: fn", "lib/a.js": "a",
                             "node_modules/dep/index.js": "d", ".git/HEAD": "ref",
                             ".sora/state": "s", "lib/__pycache__/a.pyc": "c",
                             ".env.example": "e"})
    (root / "sub").mkdir()
    out = build_zip(str(root))
    assert names(out.data) == ["lib/", "node_modules/", "node_modules/dep/", "sub/",
                               ".env.example", "index.js", "lib/a.js",
                               "node_modules/dep/index.js", "sora.yaml"]
    assert out.files == 5 and out.unzipped_bytes == 1 + 8 + 1 + 1 + 1
    with zipfile.ZipFile(io.BytesIO(out.data)) as archive:
        assert archive.read("lib/a.js") == b"a"
        assert archive.testzip() is None


def test_a_worktree_git_file_is_left_out_too(tmp_path):
    root = folder(tmp_path, {"index.js": "x", ".git": "gitdir: /elsewhere"})
    assert names(build_zip(str(root)).data) == ["index.js"]


def test_the_same_folder_gives_the_same_bytes_whatever_its_times(tmp_path):
    root = folder(tmp_path, {"index.js": "x", "b/c.js": "c", "a.js": "a"})
    first = build_zip(str(root)).data
    for path in root.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert build_zip(str(root)).data == first
    (root / "a.js").write_text("A")
    assert build_zip(str(root)).data != first


def test_modes_keep_only_whether_a_file_is_executable(tmp_path):
    root = folder(tmp_path, {"bootstrap": "#!/bin/sh\n", "data.txt": "d"})
    os.chmod(root / "bootstrap", 0o700)
    os.chmod(root / "data.txt", 0o600)
    with zipfile.ZipFile(io.BytesIO(build_zip(str(root)).data)) as archive:
        modes = {i.filename: i.external_attr >> 16 for i in archive.infolist()}
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in archive.infolist())
    assert modes == {"bootstrap": 0o100755, "data.txt": 0o100644}


def test_a_link_is_refused_not_followed(tmp_path):
    (tmp_path / "secret").write_text("outside")
    root = folder(tmp_path, {"index.js": "x"})
    os.symlink(tmp_path / "secret", root / "config.json")
    with pytest.raises(ZipRefused, match=r"config\.json: a symbolic link .*copy what it names"):
        build_zip(str(root))


def test_a_link_to_a_folder_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.js").write_text("x")
    root = folder(tmp_path, {"index.js": "x"})
    os.symlink(tmp_path / "elsewhere", root / "lib")
    with pytest.raises(ZipRefused, match="lib: a symbolic link"):
        build_zip(str(root))


def test_npm_command_line_links_are_left_out(tmp_path):
    root = folder(tmp_path, {"index.js": "x", "node_modules/tool/cli.js": "t"})
    (root / "node_modules/.bin").mkdir()
    os.symlink("../tool/cli.js", root / "node_modules/.bin/tool")
    out = build_zip(str(root))
    assert out.skipped_links == ("node_modules/.bin/tool",)
    assert "node_modules/.bin/tool" not in names(out.data)
    assert "node_modules/tool/cli.js" in names(out.data)


def test_a_fifo_is_refused(tmp_path):
    root = folder(tmp_path, {"index.js": "x"})
    os.mkfifo(root / "pipe")
    with pytest.raises(ZipRefused, match="pipe: not a regular file"):
        build_zip(str(root))


def test_too_much_unzipped_is_refused_before_anything_is_compressed(tmp_path, monkeypatch):
    root = folder(tmp_path, {"a.bin": "a" * 600, "b.bin": "b" * 600})
    import sora.cli.function_zip as fz

    def no_reading(*_):
        raise AssertionError("read a file of a folder already known to be too large")
    monkeypatch.setattr(fz, "_read_regular", no_reading)
    with pytest.raises(ZipRefused, match=r"more than the host's limit of 0\.0 MB unzipped "
                       r"\(reached at b\.bin\)"):
        build_zip(str(root), Limits(max_unzipped=1000))


def test_a_zip_over_the_zipped_limit_is_refused(tmp_path):
    root = tmp_path / "fn"
    root.mkdir()
    (root / "random.bin").write_bytes(os.urandom(20_000))   # does not compress
    with pytest.raises(ZipRefused, match="its zip is more than the host's limit"):
        build_zip(str(root), Limits(max_zipped=10_000))
    assert len(build_zip(str(root), Limits(max_zipped=30_000)).data) > 20_000


def test_not_a_folder(tmp_path):
    with pytest.raises(ZipRefused, match="not a folder"):
        build_zip(str(tmp_path / "missing"))


def test_too_many_entries_is_refused(tmp_path):
    root = folder(tmp_path, {"a/1.js": "", "a/2.js": "", "b.js": ""})
    with pytest.raises(ZipRefused, match="4 files and folders, more than the host's limit of 3"):
        build_zip(str(root), Limits(max_entries=3))
    assert build_zip(str(root), Limits(max_entries=4)).files == 3
