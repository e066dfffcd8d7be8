"""Several Sora hosts on one PostgreSQL store (issue 21, point 2): the async queue's guarantees.

- Three hosts (`sora-supervisor start`, each its own state dir, ports and `cluster.name`, one
  database) serve one function that appends each run's request id to a file; 10,000 events
  are posted with `X-Amz-Invocation-Type: Event` across the three gateways; once the queue is
  empty, every accepted request id ran exactly once (nothing crashed, so none twice).
- A database restart under load: while the server is down the answers are 503 with a JSON
  error (never a 202), after it is back they are 202 again by themselves, and every request id
  that got a 202 ran.
- The attacker's side: an event's payload and headers cannot change another function's events
  (SQL-ish text, a huge request id header), and one host cannot settle or return another's
  leases.
"""
from __future__ import annotations

import collections
import concurrent.futures
import http.client
import json
import re
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from sora.config import StoreConfig
from sora.store import backend, queue
from tests.support import SoraHost, wait_for, write_function

pytestmark = pytest.mark.integration

EVENTS = 10_000
HOSTS = 3

# Appends `<request id>\t<host>\t<the event as JSON>` to $RAN: one short write with O_APPEND,
# so lines of the three hosts' instances never mix. `fail: true` throws (a dead letter).
TALLY = """
const fs = require('node:fs');
exports.handler = async (event, context) => {
  if (event.fail) throw new Error('bystander fails on purpose');
  fs.appendFileSync(process.env.RAN,
    `${context.awsRequestId}\\t${process.env.HOST_NAME}\\t${JSON.stringify(event)}\\n`);
  return 1;
};
"""


class Poster:
    """Posts events to gateways from a pool of threads, one keep-alive connection per thread
    and gateway; answers as (status, request id or None, body)."""

    def __init__(self, ports: list[int], threads: int = 24):
        self.ports = ports
        self.local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)

    def _conn(self, port: int) -> http.client.HTTPConnection:
        conns = self.local.__dict__.setdefault("conns", {})
        if port not in conns:
            conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return conns[port]

    def post(self, port: int, function: str, body: bytes,
             headers: dict | None = None) -> tuple[int, str | None, bytes]:
        for attempt in range(2):   # a keep-alive connection the server closed: once more
            conn = self._conn(port)
            try:
                conn.request("POST", f"/2015-03-31/functions/{function}/invocations", body,
                             {"X-Amz-Invocation-Type": "Event",
                              "Content-Type": "application/json", **(headers or {})})
                r = conn.getresponse()
                data = r.read()
                return r.status, r.getheader("x-amzn-RequestId"), data
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.local.conns.pop(port)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post_many(self, function: str, bodies: list[bytes]) -> list[tuple[int, str | None,
                                                                           bytes]]:
        jobs = [self.pool.submit(self.post, self.ports[i % len(self.ports)], function, body)
                for i, body in enumerate(bodies)]
        return [job.result() for job in jobs]

    def close(self) -> None:
        self.pool.shutdown()


def ran(path: Path) -> list[tuple[str, str, str]]:
    """(request id, host, event JSON) per run, in the order they ran."""
    if not path.exists():
        return []
    return [tuple(line.split("\t", 2)) for line in path.read_text().splitlines() if line]


def pg_queue(url: str, tmp: Path):
    return backend.connect(StoreConfig(kind="postgresql", url=url, poolSize=2), str(tmp),
                           "queue")


def left_in_queue(conn, function: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM events WHERE function = ? AND state <> 'dead'",
                        (function,)).fetchone()[0]


def start_hosts(base: Path, url: str, names: list[str], ran_file: Path) -> list[SoraHost]:
    hosts = []
    for name in names:
        root = base / name
        fns = [write_function(root / "fns", "tally", {"index.js": TALLY}, name="tally",
                              instances=2, isolation="none",
                              env={"RAN": str(ran_file), "HOST_NAME": name},
                              eventInvoke={"maximumRetryAttempts": 0}),
               write_function(root / "fns", "bystander", {"index.js": TALLY},
                              name="bystander", isolation="none",
                              env={"RAN": str(ran_file), "HOST_NAME": name},
                              eventInvoke={"maximumRetryAttempts": 0})]
        hosts.append(SoraHost(root, fns, https=False, extra={
            "store": {"url": url, "poolSize": 4}, "cluster": {"name": name}}))
    # Started together: their supervisors' start-ups overlap (each waits for its functions).
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
        started = [pool.submit(h.start) for h in hosts]
        errors = [f.exception() for f in started]
    if any(errors):
        for h in hosts:
            if h.proc is not None and h.proc.poll() is None:
                h.stop()
        raise next(e for e in errors if e)
    return hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres_server):
    base = tmp_path_factory.mktemp("store-cluster")
    database = postgres_server.create_database()
    url = postgres_server.url(database)
    ran_file = base / "ran.txt"
    hosts = start_hosts(base, url, [f"h{i + 1}" for i in range(HOSTS)], ran_file)
    conn = pg_queue(url, base)
    try:
        yield hosts, conn, ran_file, url
    finally:
        codes = [h.stop() for h in hosts]
        conn.close()
        postgres_server.drop_database(database)
    for h, code in zip(hosts, codes):
        assert code == 0, h.log(whole=True)[-3000:]
        assert postgres_server.password not in h.log(whole=True)


def test_10000_events_on_three_hosts_each_run_exactly_once(cluster):
    hosts, conn, ran_file, _ = cluster
    poster = Poster([h.http_port for h in hosts])
    began = time.monotonic()
    try:
        answers = poster.post_many("tally", [b'{"n": %d}' % i for i in range(EVENTS)])
    finally:
        poster.close()
    posted_s = time.monotonic() - began
    statuses = collections.Counter(status for status, _, _ in answers)
    accepted = [rid for status, rid, _ in answers if status == 202]
    assert statuses == {202: EVENTS}, statuses   # nothing refused on a healthy store
    assert len(set(accepted)) == EVENTS
    wait_for(lambda: left_in_queue(conn, "tally") == 0, timeout=240, interval=0.5,
             what="the queue to be empty")
    done_s = time.monotonic() - began
    runs = [r for r in ran(ran_file) if r[0] in set(accepted)]
    counts = collections.Counter(rid for rid, _, _ in runs)
    missing = set(accepted) - set(counts)
    twice = {rid: n for rid, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} accepted events never ran"
    assert not twice, f"{len(twice)} events ran more than once (nothing crashed)"
    by_host = collections.Counter(host for _, host, _ in runs)
    assert set(by_host) == {h.base.name for h in hosts}, by_host   # all three took a share
    print(f"\n{EVENTS} events: posted in {posted_s:.1f} s ({EVENTS / posted_s:.0f} 202/s), "
          f"all run in {done_s:.1f} s; runs per host {dict(by_host)}")


def test_payloads_and_headers_cannot_reach_other_events(cluster):
    """A caller's payload is data, never SQL (placeholders, quotes and `%` included), and a
    request id header is not the event's id: another function's events stay as they were."""
    hosts, conn, ran_file, _ = cluster
    poster = Poster([h.http_port for h in hosts], threads=4)
    try:
        status, victim, _ = poster.post(hosts[0].http_port, "bystander", b'{"fail": true}')
        assert status == 202
        dead = wait_for(lambda: queue.dead_letters(conn, "bystander")[0], timeout=30,
                        what="the bystander's dead letter")
        before = (dead, queue.counts(conn).get("bystander"))
        nasty = ["'); DELETE FROM events; --", "' OR '1'='1", "%s %(x)s %% ? $1 \x00",
                 f"{victim}", "bystander'; UPDATE events SET state = 'queued'; --"]
        sent = []
        for i, text in enumerate(nasty):
            body = json.dumps({"text": text, "n": i}).encode()
            headers = {"X-Sora-Request-Id": victim, "X-Amz-Request-Id": "r" * 60_000,
                       "X-Amz-Client-Context": "x" * 1000}
            status, rid, answer = poster.post(hosts[i % HOSTS].http_port, "tally", body,
                                              headers)
            assert status in (202, 431, 400), (status, answer[:300])
            if status == 202:
                assert rid != victim and len(rid) < 100   # the host's own id, not the header's
                sent.append((rid, body))
            # Without the oversized header it is accepted: the payload itself is harmless.
            status, rid, answer = poster.post(hosts[i % HOSTS].http_port, "tally", body,
                                              {"X-Sora-Request-Id": victim})
            assert status == 202 and rid != victim, (status, answer[:300])
            sent.append((rid, body))
            # As a function name: no function, nothing stored.
            status, _, _ = poster.post(hosts[i % HOSTS].http_port,
                                       urllib.parse.quote(text, safe=""), body)
            assert status in (400, 404)
    finally:
        poster.close()
    wait_for(lambda: {rid for rid, _ in sent} <= {r[0] for r in ran(ran_file)}, timeout=60,
             what="the attacker's events to run")
    got = {r[0]: json.loads(r[2]) for r in ran(ran_file)}
    for rid, body in sent:
        assert got[rid] == json.loads(body)   # delivered verbatim
    assert (queue.dead_letters(conn, "bystander")[0], queue.counts(conn).get("bystander")) \
        == before
    assert queue.discard(conn, "bystander", None) == 1


def test_one_host_cannot_settle_or_return_another_hosts_lease(cluster):
    """A lease of another host (h9, say a dispatcher mid-run there) is not run by h1-h3, not
    settled by another owner, not returned when another host starts; once it runs out, the
    sweep of whichever host looks first returns it and the event runs."""
    hosts, conn, ran_file, _ = cluster
    rid = f"leased-{uuid.uuid4()}"
    now = time.time()
    foreign = queue.lease_owner("h9", 4242)
    # Stored and leased by h9 in one transaction: no dispatcher of h1-h3 can take it first.
    with conn.transaction():
        queue.enqueue(conn, [(rid, "tally", "invoke", b'{"held": true}', now)])
        (held,) = queue.lease(conn, "tally", 1, now, 600, foreign)
    assert held.request_id == rid
    mine = queue.lease_owner("h1", 1)
    assert not queue.ack(conn, held.id, mine)
    assert not queue.requeue(conn, held.id, time.time(), None, owner=mine)
    assert not queue.bury(conn, held.id, "RetriesExhausted", None, owner=mine)
    for h in ("h1", "h2", "h3"):   # what each host's dispatcher does at its start
        assert queue.release_leases(conn, time.time(), expired_only=False, host_id=h) == 0
    time.sleep(1.5)   # the hosts' dispatchers look at least every second
    assert queue.find_event(conn, rid)["state"] == "leased"
    assert rid not in {r[0] for r in ran(ran_file)}
    # h9's lease runs out (as if h9 died): the next sweep (every 10 s) returns it; it runs.
    conn.execute("UPDATE events SET lease_until = ? WHERE request_id = ?", (time.time() - 1, rid))
    wait_for(lambda: rid in {r[0] for r in ran(ran_file)}, timeout=30,
             what="the expired lease to be reaped and the event run")
    assert not queue.ack(conn, held.id, foreign)   # h9 back late: nothing left to settle


def test_a_database_restart_under_load_gives_503s_then_resumes_by_itself(
        tmp_path, postgres_server_factory):
    server = postgres_server_factory()
    url = server.url(server.create_database())
    ran_file = tmp_path / "ran.txt"
    (host,) = start_hosts(tmp_path, url, ["solo"], ran_file)
    answers: list[tuple[float, int, str | None, bytes]] = []
    stop = threading.Event()
    poster = Poster([host.http_port], threads=4)

    def post_continuously():
        n = 0
        while not stop.is_set():
            n += 1
            status, rid, body = poster.post(host.http_port, "tally", b'{"n": %d}' % n)
            answers.append((time.monotonic(), status, rid, body))

    threads = [threading.Thread(target=post_continuously) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: sum(1 for a in answers if a[1] == 202) >= 50, timeout=30,
                 what="events accepted before the restart")
        server.stop()
        down_at = time.monotonic()
        # Down: every answer once the refusals begin is a 503 (no 202 for an event that
        # cannot be stored; requests under way as it stopped may still have been stored).
        wait_for(lambda: sum(1 for a in answers if a[0] > down_at and a[1] == 503) >= 8,
                 timeout=30, what="503s while the database is down")
        first_503 = min(a[0] for a in answers if a[0] > down_at and a[1] == 503)
        time.sleep(2)
        server.start()
        up_at = time.monotonic()
        # Back: 202s again by themselves (the pools reconnect), within a deadline.
        wait_for(lambda: any(a[0] > up_at and a[1] == 202 for a in answers), timeout=45,
                 what="202s once the database is back")
        back_at = min(a[0] for a in answers if a[0] > up_at and a[1] == 202)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        poster.close()
    try:
        statuses = collections.Counter(a[1] for a in answers)
        assert set(statuses) <= {202, 503}, statuses
        during = [a for a in answers if first_503 + 0.5 < a[0] < up_at]
        assert during and all(a[1] == 503 for a in during), collections.Counter(
            a[1] for a in during)
        for _, status, _, body in answers:
            if status == 503:
                error = json.loads(body)
                assert error["errorType"] in ("Sora.StoreUnavailable", "Sora.EventNotStored")
                assert server.password not in body.decode()
        accepted = {a[2] for a in answers if a[1] == 202}
        conn = pg_queue(url, tmp_path)
        wait_for(lambda: accepted <= {r[0] for r in ran(ran_file)}, timeout=90,
                 interval=0.5, what="every accepted event to run")
        conn.close()
        print(f"\n{statuses[202]} accepted, {statuses[503]} refused with 503; the first 503 "
              f"{first_503 - down_at:.1f} s after the stop, 202s again "
              f"{back_at - up_at:.1f} s after the start")
        log = host.log(whole=True)
        assert server.password not in log
        # The dispatcher waited the outage out (it did not exit and get restarted).
        assert "the event store cannot be reached" in log and "the event store is back" in log
        assert len(re.findall(r"dispatcher \d+ ready", log)) == 1, log[-3000:]
    finally:
        assert host.stop() == 0
