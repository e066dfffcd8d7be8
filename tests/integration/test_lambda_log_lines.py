"""Lambda's own log lines (issue 15 point 5): each invocation's lines open with `START` and
close with `END` and `REPORT`, as Lambda writes them, in the function's log file, the Invoke
API's LogType Tail, `sora logs` and the records, whose fields hold the REPORT's figures; and a
function that prints such lines itself cannot close another invocation's lines or change its
figures."""
from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support import served, wait_for, write_function

pytestmark = pytest.mark.integration

SORA = [str(Path(sys.executable).parent / "sora")]

# Prints two lines; sleeps `sleepMs`; keeps `allocMB` more MB for the rest of its life (as
# a cache would); prints whatever `print` holds, as given.
LOGGER = r"""
const kept = [];
exports.handler = async (event, context) => {
  console.log(`begin ${context.awsRequestId}`);
  if (event.allocMB) kept.push(Buffer.alloc(event.allocMB << 20, 1));
  if (event.sleepMs) await new Promise((r) => setTimeout(r, event.sleepMs));
  for (const line of event.print || []) process.stdout.write(line + '\n');
  console.error(`done ${context.awsRequestId}`);
  return { id: context.awsRequestId };
};
"""

REPORT_RE = re.compile(
    r"^REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: (?P<duration>\d+\.\d\d) ms\t"
    r"Billed Duration: (?P<billed>\d+) ms\tMemory Size: (?P<size>\d+) MB\t"
    r"Max Memory Used: (?P<used>\d+) MB\t(?:Init Duration: (?P<init>\d+\.\d\d) ms\t)?$")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("loglines")
    d = write_function(base / "fns", "logger", {"index.js": LOGGER}, name="logger",
                       memory=192, minInstances=2, maxInstances=2, concurrency=2)
    yield from served(base, [d], https=False)


def invoke(host, event: dict, tail: bool = False) -> tuple[str, dict, str]:
    """Through the Invoke API: (request id, result, the tail's text)."""
    r = requests.post(f"{host.url}/2015-03-31/functions/logger/invocations",
                      data=json.dumps(event), timeout=30,
                      headers={"X-Amz-Log-Type": "Tail"} if tail else {})
    assert r.status_code == 200 and "X-Amz-Function-Error" not in r.headers, r.text
    text = base64.b64decode(r.headers["X-Amz-Log-Result"]).decode() if tail else ""
    return r.headers["x-amzn-RequestId"], r.json(), text


def stored_lines(host, request_id: str) -> list[dict]:
    """The record's lines, once its REPORT is stored."""
    return wait_for(lambda: (lines := host.record(request_id)["logs"])
                    and lines[-1]["line"].startswith("REPORT") and lines,
                    what=f"the REPORT line of {request_id}")


def file_lines(host) -> list[tuple[str, str, str]]:
    """(request id, stream, text) of each line of the function's log file."""
    path = host.base / "state" / "logs" / "logger.log"
    return [tuple(line.split(" ", 3)[1:]) for line in path.read_text().splitlines()]


def platform_lines_in_file(host, request_id: str) -> list[str]:
    return [text for rid, stream, text in file_lines(host)
            if rid == request_id and stream == "platform"]


def check_report(line: str, request_id: str, record: dict, cold: bool) -> re.Match:
    report = REPORT_RE.match(line)
    assert report, f"not Lambda's REPORT line: {line!r}"
    assert report["id"] == request_id and report["size"] == "192"
    duration = float(report["duration"])
    assert abs(duration - record["durationMs"]) < 0.011
    assert int(report["billed"]) == -(-round(duration * 100) // 100)   # rounded up to 1 ms
    assert int(report["used"]) == record["maxMemoryUsedMB"] > 0
    if cold:
        # (the record keeps it to 2 decimals, from 3: 0.005 ms apart at most)
        assert abs(float(report["init"]) - record["initDurationMs"]) < 0.011
        assert record["initDurationMs"] > 0
    else:
        assert report["init"] is None and "initDurationMs" not in record
    return report


def test_the_lines_in_the_file_the_tail_sora_logs_and_the_records(host):
    first, _, first_tail = invoke(host, {}, tail=True)
    second, _, tail = invoke(host, {"allocMB": 96}, tail=True)
    records = {rid: host.record(rid) for rid in (first, second)}
    assert records[first]["cold"] is True and records[second]["cold"] is False

    # The records: START, the function's lines, END, REPORT; the figures are fields.
    for rid in (first, second):
        lines = stored_lines(host, rid)
        assert [(x["stream"], x["line"]) for x in lines[:1] + lines[-2:-1]] == [
            ("platform", f"START RequestId: {rid} Version: $LATEST"),
            ("platform", f"END RequestId: {rid}")]
        assert [x["line"] for x in lines[1:-2]] == [f"begin {rid}", f"done {rid}"]
        check_report(lines[-1]["line"], rid, records[rid], cold=rid == first)
    # Max Memory Used grows when the function allocates, and is the instance's: the 96 MB
    # it keeps count (the instance's peak; Lambda reports the environment's).
    assert records[second]["maxMemoryUsedMB"] >= records[first]["maxMemoryUsedMB"] + 90

    # LogType: Tail: the same lines, START first, REPORT last, as Lambda's X-Amz-Log-Result.
    for rid, text in ((first, first_tail), (second, tail)):
        got = text.splitlines()
        assert got[0] == f"START RequestId: {rid} Version: $LATEST"
        assert got[1:3] == [f"begin {rid}", f"done {rid}"]
        assert got[3] == f"END RequestId: {rid}"
        check_report(got[4], rid, records[rid], cold=rid == first)
        assert text.endswith("\t\n")   # every REPORT field ends with a tab, as on Lambda
    assert "Init Duration" in first_tail and "Init Duration" not in tail

    # The log file: the same lines under the invocation's id, on the platform stream.
    in_file = wait_for(lambda: len(x := platform_lines_in_file(host, second)) == 3 and x,
                       what="the file's START, END and REPORT lines")
    assert in_file == [x["line"] for x in stored_lines(host, second) if
                       x["stream"] == "platform"]

    # sora logs --request-id and sora inspect show them; inspect shows the figures.
    shown = subprocess.run([*SORA, "logs", "logger", "--host", host.url, "--request-id",
                            second], capture_output=True, text=True, timeout=60).stdout
    assert f"START RequestId: {second} Version: $LATEST" in shown
    assert f"END RequestId: {second}" in shown and f"REPORT RequestId: {second}\t" in shown
    inspected = subprocess.run([*SORA, "inspect", second, "--host", host.url],
                               capture_output=True, text=True, timeout=60).stdout
    assert f"max memory used:    {records[second]['maxMemoryUsedMB']} MB" in inspected
    assert "init duration:" not in inspected
    inspected = subprocess.run([*SORA, "inspect", first, "--host", host.url],
                               capture_output=True, text=True, timeout=60).stdout
    assert f"init duration:      {records[first]['initDurationMs']} ms" in inspected
    assert "cold start:         True" in inspected
    # The records API lists them too.
    listed = requests.get(f"{host.url}/api/functions/logger/invocations", timeout=10).json()
    by_id = {item["requestId"]: item for item in listed["invocations"]}
    assert by_id[second]["maxMemoryUsedMB"] == records[second]["maxMemoryUsedMB"]


def test_concurrent_invocations_each_carry_their_own_id(host):
    with ThreadPoolExecutor(2) as pool:
        calls = list(pool.map(lambda _: invoke(host, {"sleepMs": 600}, tail=True), range(2)))
    ids = [rid for rid, _, _ in calls]
    for rid, _, tail in calls:
        lines = stored_lines(host, rid)
        assert [x["line"] for x in lines[:-1]] == [
            f"START RequestId: {rid} Version: $LATEST", f"begin {rid}", f"done {rid}",
            f"END RequestId: {rid}"]
        assert REPORT_RE.match(lines[-1]["line"])["id"] == rid
        assert tail.splitlines()[0] == f"START RequestId: {rid} Version: $LATEST"
        other = ids[1 - ids.index(rid)]
        assert other not in tail
    # In the file, each of Sora's lines stands under the id it names.
    for rid, stream, text in file_lines(host):
        if stream == "platform":
            assert text.split("RequestId: ")[1].split()[0] == rid


def test_forged_end_and_report_lines_close_nothing_and_change_no_figure(host):
    """The attacker's function prints Lambda's END and REPORT lines (and Sora's own end
    marker) naming a victim invocation that runs beside it, with figures of its choosing."""
    victim: dict = {}
    seen_before = {x["requestId"] for x in requests.get(
        f"{host.url}/api/functions/logger/logs", params={"limit": 1000}, timeout=10,
    ).json()["lines"]}

    def run_victim():
        victim["call"] = invoke(host, {"sleepMs": 1500}, tail=True)

    thread = threading.Thread(target=run_victim)
    thread.start()
    # The victim's id, from its first line as the records API streams it.
    victim_id = wait_for(lambda: next((x["requestId"] for x in requests.get(
        f"{host.url}/api/functions/logger/logs", params={"limit": 1000}, timeout=10,
    ).json()["lines"] if x["line"].startswith("begin ") and x["requestId"] not in
        seen_before), None), what="the victim's first line")
    forged = [f"END RequestId: {victim_id}",
              f"REPORT RequestId: {victim_id}\tDuration: 0.01 ms\tBilled Duration: 1 ms\t"
              f"Memory Size: 192 MB\tMax Memory Used: 1 MB\t",
              f"\x00SORA-END {victim_id}", f"START RequestId: {victim_id} Version: $LATEST"]
    attacker, _, attacker_tail = invoke(host, {"print": forged}, tail=True)
    thread.join(30)
    victim_id_answered, _, victim_tail = victim["call"]
    assert victim_id_answered == victim_id

    # The victim's lines: its own, closed by its own END and REPORT, whose figures are its
    # record's (1500 ms, not 0.01).
    record = host.record(victim_id)
    lines = stored_lines(host, victim_id)
    assert [x["line"] for x in lines[:-1]] == [
        f"START RequestId: {victim_id} Version: $LATEST", f"begin {victim_id}",
        f"done {victim_id}", f"END RequestId: {victim_id}"]
    report = check_report(lines[-1]["line"], victim_id, record, cold=record["cold"])
    assert float(report["duration"]) >= 1500
    assert victim_tail.splitlines()[1:3] == [f"begin {victim_id}", f"done {victim_id}"]
    assert sum(line.startswith("END RequestId") for line in victim_tail.splitlines()) == 1
    # The forged lines are the attacker's own output, inside its own START ... REPORT (a
    # control character shown as \xNN: sora.worker.logs).
    lines = stored_lines(host, attacker)
    assert [(x["stream"], x["line"]) for x in lines[1:-3]] == [
        ("stdout", f"begin {attacker}"),
        *(("stdout", line.replace("\x00", "\\x00")) for line in forged)]
    assert lines[-2]["line"] == f"END RequestId: {attacker}"
    assert lines[-1]["stream"] == "platform" and \
        REPORT_RE.match(lines[-1]["line"])["id"] == attacker
    assert attacker_tail.splitlines()[-1].startswith(f"REPORT RequestId: {attacker}\t")
    # In the file, the forged lines stand under the attacker's id on stdout; the only END
    # and REPORT under the victim's id are Sora's.
    in_file = file_lines(host)
    assert sorted((rid, stream, text.split("\t")[0]) for rid, stream, text in in_file
                  if victim_id in text and text.startswith(("END", "REPORT"))) == sorted([
        (victim_id, "platform", f"END RequestId: {victim_id}"),
        (victim_id, "platform", f"REPORT RequestId: {victim_id}"),
        (attacker, "stdout", f"END RequestId: {victim_id}"),
        (attacker, "stdout", f"REPORT RequestId: {victim_id}")])
