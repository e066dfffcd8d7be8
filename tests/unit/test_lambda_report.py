"""Lambda's START/END/REPORT lines (issue 15 point 5): their format, and Max Memory Used where
an instance has no cgroup (its process tree's peak resident set)."""
import subprocess
import sys

from sora.worker.logs import PLATFORM, FunctionLog
from sora.worker.memory_peak import PeakMemory
from sora.worker.report import end_lines, start_line

RID = b"01a21412-0e85-7e7e-975c-5fdb86a723ef"


def test_the_lines_are_lambdas():
    assert start_line(RID) == b"START RequestId: %s Version: $LATEST" % RID
    end, report = end_lines(RID, 12.171, 192, 9, 405.0912)
    assert end == b"END RequestId: %s" % RID
    assert report == (b"REPORT RequestId: %s\tDuration: 12.17 ms\tBilled Duration: 13 ms\t"
                      b"Memory Size: 192 MB\tMax Memory Used: 9 MB\t"
                      b"Init Duration: 405.09 ms\t" % RID)
    # Warm: no Init Duration; a whole millisecond is billed as itself.
    assert end_lines(RID, 3.0, 128, 40)[1].endswith(
        b"Duration: 3.00 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\t"
        b"Max Memory Used: 40 MB\t")
    assert end_lines(RID, 1000.0, 128, 40, status=b"timeout")[1].endswith(
        b"Max Memory Used: 40 MB\tStatus: timeout\t")
    assert end_lines(RID, 5.0, 128, 40, status=b"crashed", error_type="Runtime.ExitError")[
        1].endswith(b"Status: error\tError Type: Runtime.ExitError\t")


def test_start_goes_before_the_first_line_and_is_never_cut(tmp_path):
    log = FunctionLog(str(tmp_path), "fn", stored_per_invocation=10)
    log.want_tail("r1")
    log.begin("r1", start_line(b"r1"))
    log.write("r1", "stdout", [b"x" * 20, b"more"])   # past the allowance of 10 bytes
    log.end("r1", end_lines(b"r1", 1.0, 128, 1))
    log.begin("r2", start_line(b"r2"))
    log.end("r2", end_lines(b"r2", 1.0, 128, 1))        # printed nothing
    log.flush()
    lines = (tmp_path / "logs" / "fn.log").read_text().splitlines()
    assert [line.split(" ", 3)[1:3] + [line.split(" ", 3)[3].split("\t")[0]]
            for line in lines] == [
        ["r1", PLATFORM, "START RequestId: r1 Version: $LATEST"], ["r1", "stdout", "x" * 20],
        ["r1", "stdout", "more"], ["r1", PLATFORM, "END RequestId: r1"],
        ["r1", PLATFORM, "REPORT RequestId: r1"],
        ["r2", PLATFORM, "START RequestId: r2 Version: $LATEST"],
        ["r2", PLATFORM, "END RequestId: r2"], ["r2", PLATFORM, "REPORT RequestId: r2"]]
    log.close()


def test_without_a_cgroup_the_peak_is_the_process_trees():
    """A child that allocates 64 MB after its first reading: the peak grows by that much and
    stays after the memory is freed."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys\n"
        "sys.stdin.readline(); x = b'1' * (64 << 20); del x; print('freed', flush=True)\n"
        "sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        peak = PeakMemory(None, child.pid)
        before = peak.read()
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"freed\n"
        after = peak.read()
        assert after - before >= 60 << 20, (before, after)
        assert peak.peak_mb == -(-after // (1 << 20))
    finally:
        child.kill()
        child.wait()
    assert peak.read() == after   # exited: the last peak stays
    peak.close()
