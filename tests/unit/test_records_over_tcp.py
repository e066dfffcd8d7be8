"""Records of a joined host travel over tcp + CURVE to the main host's recorder (its
cluster.listen's port + 1); a sender whose key is not on the allow-list is refused. The
recorder stores them in SQLite or PostgreSQL (`store_backend`: its host config's `store:`)."""
import os
import signal
import subprocess
import sys
import time

import yaml
import zmq

from sora.cluster import keys as k
from sora.store import backend
from sora.store.recorder import RecordSender
from tests.support import free_port_pair, store_setting, wait_for


def stored(state, store):
    conn = backend.connect(store, state, "records")
    try:
        return [r[0] for r in conn.execute("SELECT request_id FROM invocations ORDER BY id")]
    finally:
        conn.close()


def test_a_record_sent_over_tcp_is_stored_and_a_wrong_key_refused(store_backend, tmp_path):
    state = str(tmp_path / "state")
    config = tmp_path / "host-config.yaml"     # for its store: (never a URL in argv)
    config.write_text(yaml.safe_dump({"functionPaths": ["fn"], "server": {"httpPort": 8080},
                                      "stateDir": state,
                                      "store": store_setting(store_backend)}))
    os.makedirs(os.path.join(state, "run"))
    main = k.init_keys(str(tmp_path / "main"))
    joined = k.init_keys(str(tmp_path / "joined"))
    stranger = k.init_keys(str(tmp_path / "stranger"))
    k.add_allowed(main.directory, os.path.join(joined.directory, k.HOST_CERT), "joined")
    port = free_port_pair()
    log_path = tmp_path / "recorder.log"
    with open(log_path, "wb") as log:
        recorder = subprocess.Popen(
            [sys.executable, "-m", "sora.store.recorder", "--state-dir", state,
             "--cluster-listen", f"tcp://127.0.0.1:{port}", "--keys", main.directory,
             "--config", str(config)],
            stderr=log)
    ctx = zmq.Context()
    senders = []
    try:
        wait_for(lambda: b"other hosts' records on tcp://127.0.0.1:%d" % (port + 1)
                 in log_path.read_bytes(), timeout=10, what="the recorder listening")
        endpoint = f"tcp://127.0.0.1:{port + 1}"
        for ring, rid in ((joined, b"from-joined"), (stranger, b"from-stranger")):
            sender = RecordSender(state, ctx, endpoint=endpoint, keys=ring,
                                  server_key=main.public)
            senders.append(sender)
            sender.record(rid, b"fn", b"http", time.time(), 1.0, b"ok", None, False)
            sender.lines("fn", rid.decode(), "stdout", [b"a line"])
            sender.flush()

        def acknowledged():
            senders[0].flush()
            return not senders[0].unacked
        wait_for(acknowledged, timeout=10, what="the joined host's batch acknowledged")
        assert stored(state, store_backend) == ["from-joined"]
        wait_for(lambda: b"refused a connection from 127.0.0.1" in log_path.read_bytes(),
                 timeout=10, what="the stranger's refusal logged")
        assert stranger.public in log_path.read_bytes()
        senders[1].flush()
        assert senders[1].unacked and stored(state, store_backend) == ["from-joined"]
    finally:
        for sender in senders:
            sender.close(wait=0)
        ctx.term()
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(timeout=10)
    assert recorder.returncode == 0


def test_the_recorder_refuses_cluster_listen_without_keys(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sora.store.recorder", "--state-dir",
                           str(tmp_path), "--cluster-listen", "tcp://127.0.0.1:7100"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--cluster-listen needs --keys" in done.stderr
    done = subprocess.run([sys.executable, "-m", "sora.store.recorder", "--state-dir",
                           str(tmp_path), "--cluster-listen", "tcp://127.0.0.1:7100",
                           "--keys", str(tmp_path / "nokeys")],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "expected a keys folder" in done.stderr
