"""sora.deploy.zip_code: every hostile zip is refused with its reason and leaves nothing."""
import io
import os
import stat
import zipfile

import pytest

from sora.deploy.zip_code import ZipLimits, ZipRefused, code_sha256, extract
from tests.hostile_zips import make_zip, unix_entry

MB = 1 << 20


def refused(blob, tmp_path, limits=ZipLimits(), error_type="InvalidParameterValueException"):
    with pytest.raises(ZipRefused) as caught:
        extract(blob, str(tmp_path), limits)
    assert caught.value.error_type == error_type
    assert os.listdir(tmp_path) == []   # nothing written, not even the temporary folder
    return str(caught.value)


def test_a_good_zip_is_extracted_with_safe_modes(tmp_path):
    blob = make_zip([("index.js", "exports.handler = async () => 1;"),
                     (unix_entry("bootstrap", stat.S_IFREG | 0o4777), "#!/bin/sh\n"),
                     ("lib/", ""), ("lib/util.js", "module.exports = 2;")])
    code = extract(blob, str(tmp_path), ZipLimits())
    assert os.path.dirname(code.folder) == str(tmp_path)
    assert sorted(os.listdir(code.folder)) == ["bootstrap", "index.js", "lib"]
    assert stat.S_IMODE(os.stat(os.path.join(code.folder, "bootstrap")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(os.path.join(code.folder, "index.js")).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.join(code.folder, "lib")).st_mode) == 0o755
    assert code.code_size == len(blob) and code.code_sha256 == code_sha256(blob)
    assert code.unzipped_size == len("exports.handler = async () => 1;") + 10 + 19


@pytest.mark.parametrize("name", ["../evil.js", "a/../../evil.js", "/etc/evil", "..\\evil.js",
                                  "C:/evil.js", "a/b/../../../x"])
def test_paths_that_escape_are_refused(tmp_path, name):
    message = refused(make_zip([("ok.js", "1"), (name, "x")]), tmp_path)
    assert "Code.ZipFile" in message and ("escapes" in message or "absolute" in message)


def test_a_symlink_entry_is_refused(tmp_path):
    message = refused(make_zip([(unix_entry("link", stat.S_IFLNK | 0o777), "/etc/passwd")]),
                      tmp_path)
    assert "symbolic link" in message


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_devices_and_fifos_are_refused(tmp_path, kind):
    assert "device, fifo or socket" in refused(make_zip([(unix_entry("dev", kind | 0o644),
                                                          "")]), tmp_path)


def test_too_many_entries(tmp_path):
    blob = make_zip([(f"f{i}.js", "") for i in range(11)])
    assert "11 entries; the limit is 10" in refused(blob, tmp_path, ZipLimits(max_entries=10))


def test_zipped_size_limit_is_request_too_large(tmp_path):
    blob = make_zip([("big.bin", os.urandom(2 * MB))], zipfile.ZIP_STORED)
    message = refused(blob, tmp_path, ZipLimits(max_zipped=MB), "RequestTooLargeException")
    assert "limit is 1048576 bytes" in message


def test_declared_unzipped_size_limit(tmp_path):
    blob = make_zip([("zeros.bin", b"\0" * (3 * MB))])
    assert len(blob) < MB
    message = refused(blob, tmp_path, ZipLimits(max_unzipped=2 * MB))
    assert "declares" in message and "unzipped" in message


def lying_bomb(real_size: int) -> bytes:
    """A zip whose headers declare 10 bytes for an entry that inflates to `real_size`."""
    blob = bytearray(make_zip([("bomb.bin", b"\0" * real_size)]))
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = blob.find(signature)
        blob[at + offset:at + offset + 4] = (10).to_bytes(4, "little")
    return bytes(blob)


def test_a_bomb_that_lies_about_its_size_is_refused(tmp_path):
    blob = lying_bomb(5 * MB)
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.infolist()[0].file_size == 10   # the lie passes the declared check
    message = refused(blob, tmp_path, ZipLimits(max_unzipped=MB))
    assert "Code.ZipFile" in message


def test_bytes_are_counted_while_writing(tmp_path, monkeypatch):
    """Whatever the headers declared, extraction stops once the bytes written pass the limit."""
    import sora.deploy.zip_code as zc
    monkeypatch.setattr(zc, "declared_size", lambda infos: 0)   # headers that lie
    blob = make_zip([("a.bin", b"\0" * (600 << 10)), ("b.bin", b"\0" * (600 << 10))])
    assert "holds more than" in refused(blob, tmp_path, ZipLimits(max_unzipped=MB))


def test_not_a_zip(tmp_path):
    assert "could not unzip" in refused(b"not a zip at all", tmp_path)


def test_duplicate_entries_are_refused(tmp_path):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # zipfile warns about the duplicate name
        blob = make_zip([("index.js", "1"), ("index.js", "2")])
    assert "twice" in refused(blob, tmp_path)


def test_a_file_and_a_folder_of_one_name_are_refused(tmp_path):
    assert "both a file and a folder" in refused(make_zip([("a", "1"), ("a/b.js", "2")]),
                                                 tmp_path)


def test_encrypted_entries_are_refused(tmp_path):
    blob = bytearray(make_zip([("secret.js", "1")]))
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = blob.find(signature)
        blob[at + offset] |= 1
    assert "encrypted" in refused(bytes(blob), tmp_path)


def test_the_end_record_count_is_checked_before_parsing(tmp_path, monkeypatch):
    """A zip declaring more entries than the limit is refused before zipfile builds them."""
    blob = make_zip([(f"f{i}.js", "") for i in range(11)])
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda *a, **k: pytest.fail("parsed"))
    assert "11 entries" in refused(blob, tmp_path, ZipLimits(max_entries=10))


def test_a_name_too_long_for_the_file_system(tmp_path):
    assert "too long" in refused(make_zip([("a" * 300 + ".js", "1")]), tmp_path)
    deep = "/".join(["d" * 200] * 30) + "/x.js"
    assert "too long" in refused(make_zip([(deep, "1")]), tmp_path)
