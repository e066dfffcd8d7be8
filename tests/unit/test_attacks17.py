"""The attacker's pass over issue 17, the parts best checked without a host: hostile zips'
central directories, and what watch mode reads of a folder a function can change."""
import os
import time
import zipfile

import pytest

from sora.deploy.zip_code import ZipLimits, ZipRefused, central_entries, extract
from tests.hostile_zips import lying_count_zip, make_zip


def test_a_zip_lying_about_its_entry_count_is_refused_before_it_is_parsed(tmp_path,
                                                                          monkeypatch):
    # The end record says 1 entry; the central directory holds 200,000 (zipfile would build a
    # ZipInfo of each: before the fix, a million took 9 s and 300 MB of the gateway's).
    blob = lying_count_zip(200_000)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda *a, **k: pytest.fail("parsed"))
    began = time.monotonic()
    with pytest.raises(ZipRefused) as caught:
        extract(blob, str(tmp_path), ZipLimits())
    assert time.monotonic() - began < 1.0
    assert "more than 20000 entries" in str(caught.value)
    assert os.listdir(tmp_path) == []


def test_the_central_count_is_the_real_one_for_honest_zips():
    entries = [(f"d{i}/f{i}.js", "x" * i) for i in range(50)]
    blob = make_zip(entries)
    assert central_entries(blob, 1000) == 50
    assert central_entries(blob, 10) == 11   # stops once past the limit
    # Data before the zip (a self-extracting archive's stub) moves every offset.
    assert central_entries(b"#!/bin/sh\n" * 100 + blob, 1000) == 50
    assert central_entries(b"not a zip", 10) == 0


def test_the_central_count_reads_zip64_end_records():
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:   # past 65,535 entries: a zip64 end record
        for i in range(70_000):
            archive.writestr(str(i), "")
    blob = buffer.getvalue()
    assert blob.find(b"PK\x06\x06") > 0
    assert central_entries(blob, 100_000) == 70_000
    assert central_entries(b"stub" * 10 + blob, 100_000) == 70_000


def _within(seconds, call, *args):
    """call(*args) on a thread; fail if it has not returned in `seconds` (a hang)."""
    import concurrent.futures
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(call, *args).result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        pytest.fail(f"{call.__name__}{args} hung")
    finally:
        pool.shutdown(wait=False)


def test_watch_reads_no_link_no_fifo_and_no_more_than_its_limit(tmp_path, monkeypatch):
    from sora.supervisor import watch
    os.mkfifo(tmp_path / "fifo")
    os.symlink("/dev/zero", tmp_path / "zero")
    os.symlink("/etc/shadow", tmp_path / "shadow")
    assert _within(5, watch.digest, str(tmp_path / "fifo")).startswith("other:")
    assert _within(5, watch.digest, str(tmp_path / "zero")).startswith("other:")
    assert _within(5, watch.digest, str(tmp_path / "shadow")).startswith("other:")
    # A file that grows after its size was taken: read up to the limit, not to its end.
    monkeypatch.setattr(watch, "DIGEST_MAX_BYTES", 1000)
    (tmp_path / "big").write_bytes(b"x" * 5000)
    real_fstat = os.fstat

    def small_fstat(fd):   # the size as it was a moment before
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid,
                               st.st_gid, 10, st.st_atime, st.st_mtime, st.st_ctime))
    monkeypatch.setattr(watch.os, "fstat", small_fstat)
    reads = []
    real_read = os.read
    monkeypatch.setattr(watch.os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    assert watch.digest(str(tmp_path / "big")).startswith("large:")
    assert sum(reads) <= 1001


def test_watch_swapped_link_is_not_followed(tmp_path, monkeypatch):
    """The old digest stat-ed the path, then opened it by name: a link swapped in between was
    followed (root reading /dev/zero into memory). Now the open itself refuses a link."""
    from sora.supervisor import watch
    target = tmp_path / "index.js"
    target.write_text("1")
    real_open = os.open

    def swap_then_open(path, flags, *args, **kwargs):
        if str(path) == str(target):
            os.unlink(target)
            os.symlink("/dev/zero", target)
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(watch.os, "open", swap_then_open)
    assert _within(5, watch.digest, str(target)).startswith("other:")


def test_watch_reads_sora_yaml_without_following_or_blocking(tmp_path):
    from sora.supervisor import watch
    (tmp_path / "real.yaml").write_text("setup: [echo hi]\n")
    os.symlink(tmp_path / "real.yaml", tmp_path / "sora.yaml")
    assert _within(5, watch.declared_setup, str(tmp_path)) is None
    os.unlink(tmp_path / "sora.yaml")
    os.mkfifo(tmp_path / "sora.yaml")
    assert _within(5, watch.declared_setup, str(tmp_path)) is None
    os.unlink(tmp_path / "sora.yaml")
    (tmp_path / "sora.yaml").write_text("setup: [echo hi]\n")
    assert watch.declared_setup(str(tmp_path)) == ["echo hi"]


def test_loader_variables_reach_only_the_functions_command(tmp_path):
    """LD_PRELOAD & co. of a function's env: never in bubblewrap's (or setpriv's)
    environment, set by `env` as the last step before the function's own command."""
    from sora.config import load_function_config
    from sora.isolation import sandbox
    (tmp_path / "index.js").write_text("exports.handler = async () => 1;")
    (tmp_path / "sora.yaml").write_text(
        "name: f\nlanguage: nodejs\nentrypoint: index.js\nhandler: handler\n"
        "env: {LD_PRELOAD: /x.so, LD_LIBRARY_PATH: /lib/x, GLIBC_TUNABLES: a=b, KEEP: 'yes'}\n")
    fn = load_function_config(str(tmp_path))
    argv = sandbox.wrap(["node", "bootstrap.js"], fn)
    at = argv.index(sandbox.ENV_PROGRAM)
    assert argv[at + 1:at + 4] == ["GLIBC_TUNABLES=a=b", "LD_LIBRARY_PATH=/lib/x",
                                   "LD_PRELOAD=/x.so"]
    assert argv[at + 4:] == ["node", "bootstrap.js"]
    assert argv[at - 1] == "--"
    assert (sandbox.program("setpriv") in argv[:at]) == (os.geteuid() == 0)
    # bwrap and setpriv by their own paths: never looked up on the function's PATH.
    assert argv[0] == sandbox.program("bwrap") and os.path.isabs(argv[0])
    env = sandbox.without_loader_variables({"LD_PRELOAD": "/x.so", "KEEP": "yes",
                                            "PATH": "/usr/bin"}, fn)
    assert env == {"KEEP": "yes", "PATH": "/usr/bin"}
    setup = sandbox.wrap_setup("npm ci", fn, str(tmp_path), str(tmp_path))
    assert "LD_PRELOAD=/x.so" in setup and setup.index("LD_PRELOAD=/x.so") > setup.index("--")
