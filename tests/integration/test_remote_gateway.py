"""The main host's gateway and CLI in front of a joined host (two hosts on 127.0.0.1, the
fixture of tests/integration/test_join.py): a function only the joined host serves is called
through the main host's function URL and Invoke API (its gateways reach the joined worker as
CURVE clients), its record and logs are read from the main host (`sora logs`, `sora inspect`),
`sora ls` shows both hosts and the hosts of each function, and the main host's dispatcher runs
its asynchronous events there."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration import test_join
from tests.support import wait_for

cluster = test_join.cluster   # the fixture: a main host and a joined one, h2

SORA = str(Path(sys.executable).parent / "sora")


def sora(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SORA, *args], capture_output=True, text=True, timeout=60)


def test_the_main_gateway_serves_a_function_only_a_joined_host_has(cluster):
    main, _, _ = cluster
    r = main.invoke("there", method="POST", data="{}", timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["host"] == "h2"
    request_id = r.headers["X-Sora-Request-Id"]
    r = main.session.post(f"{main.url}/2015-03-31/functions/there/invocations",
                          data=b'{"sleep": 0}', timeout=30)
    assert r.status_code == 200 and r.json()["host"] == "h2", r.text
    # Its record came to the main host's store: inspect and logs from there.
    wait_for(lambda: main.session.get(f"{main.url}/api/invocations/{request_id}",
                                      timeout=5).status_code == 200, timeout=30,
             what="the record")
    inspected = sora("inspect", request_id, "--host", main.url, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["function"] == "there"
    logs = sora("logs", "there", "--host", main.url)
    assert logs.returncode == 0, logs.stderr
    # Both hosts in `sora ls`, and each function's hosts.
    listed = sora("ls", "--host", main.url, "--wide")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert "HOSTS" in lines[0].split()
    there = next(line for line in lines if line.startswith("there "))
    assert " h2 " in there
    assert any(line.startswith("main (this host)") for line in lines), listed.stdout
    assert any(line.startswith("h2 ") and "127.0.0.1" in line and "joined" in line
               for line in lines), listed.stdout
    as_json = json.loads(sora("ls", "--host", main.url, "--json").stdout)
    assert as_json["hosts"]["h2"]["state"] == "joined"


def test_the_main_dispatcher_runs_the_events_of_a_function_only_a_joined_host_has(
        cluster):
    main, _, _ = cluster
    ids = []
    for n in range(3):
        r = main.invoke("there", method="POST", data=json.dumps({"n": n}), timeout=30,
                        headers={"X-Sora-Invocation-Type": "Event"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["requestId"])

    def done():
        answers = [main.session.get(f"{main.url}/api/invocations/{i}", timeout=5).json()
                   for i in ids]
        return all(a.get("status") == "ok" for a in answers) and answers

    answers = wait_for(done, timeout=30, what="the events to run on h2")
    assert {a["function"] for a in answers} == {"there"}
