"""Metric slots (sora.metrics.slots): the lowest free slot is taken, a held one is skipped, a
dead holder's slot is taken over (files reused, never a new one per restart)."""
import os
import subprocess
import sys

import pytest

from sora.metrics.slots import NoSlot, slot_holders, take_slot

HOLD = """
import sys, time
from sora.metrics.slots import take_slot
slot = take_slot(sys.argv[1], sys.argv[2])
print(slot.name, flush=True)
time.sleep(60)
"""


def holder(directory, role):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), role],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_lowest_free_slot_and_reuse_after_its_holder_dies(tmp_path):
    first, name0 = holder(tmp_path, "gateway-http")
    second, name1 = holder(tmp_path, "gateway-http")
    try:
        assert (name0, name1) == ("gateway-http-0", "gateway-http-1")
        assert slot_holders(str(tmp_path)) == {first.pid: name0, second.pid: name1}
        first.kill()
        first.wait()
        # The kernel dropped the dead holder's lock: its slot is the next one taken.
        third, name = holder(tmp_path, "gateway-http")
        try:
            assert name == "gateway-http-0"
            assert slot_holders(str(tmp_path)) == {second.pid: name1, third.pid: name0}
        finally:
            third.kill()
            third.wait()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
            proc.stdout.close()
    # Lock files only: as many as slots ever held at once.
    assert sorted(os.listdir(tmp_path)) == ["gateway-http-0.lock", "gateway-http-1.lock"]


def test_roles_have_their_own_slots_and_a_held_slot_is_seen_held_in_its_own_process(tmp_path):
    a = take_slot(str(tmp_path), "recorder")
    b = take_slot(str(tmp_path), "dispatcher")
    c = take_slot(str(tmp_path), "recorder")
    try:
        assert (a.name, b.name, c.name) == ("recorder-0", "dispatcher-0", "recorder-1")
        # Held, even seen from the holder itself (another open file description).
        assert slot_holders(str(tmp_path))[os.getpid()] in {"recorder-0", "dispatcher-0",
                                                            "recorder-1"}
    finally:
        for slot in (a, b, c):
            slot.release()
    assert slot_holders(str(tmp_path)) == {}
    again = take_slot(str(tmp_path), "recorder")
    assert again.name == "recorder-0"
    again.release()


def test_a_role_must_be_a_plain_name(tmp_path):
    for role in ("../x", "a/b", "", "X", "a" * 60):
        with pytest.raises(ValueError):
            take_slot(str(tmp_path), role)


def test_a_symlinked_lock_file_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(target, tmp_path / "recorder-0.lock")
    with pytest.raises(OSError):
        take_slot(str(tmp_path), "recorder")
    assert target.read_text() == "keep"


def test_no_slot_left(tmp_path, monkeypatch):
    monkeypatch.setattr("sora.metrics.slots.MAX_SLOTS", 2)
    held = [take_slot(str(tmp_path), "recorder") for _ in range(2)]
    with pytest.raises(NoSlot):
        take_slot(str(tmp_path), "recorder")
    for slot in held:
        slot.release()
