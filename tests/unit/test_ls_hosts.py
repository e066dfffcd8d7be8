"""`sora ls` on a cluster (issue 16 point 3): each host (name, address, state, last heard,
what it serves) and the hosts serving each function; a single host's table is unchanged; and
`--json` passes /api/functions through."""
import json

from sora.cli import main as cli

NOW = 1_800_000_000.0

CLUSTER = {
    "status": "ok",
    "functions": [
        {"name": "echo", "state": "RUNNING", "instances": 3, "language": "nodejs",
         "hosts": ["main", "h2"], "events": {"queued": 0, "leased": 1, "dead": 0},
         "reason": "pid 7 ready after 0.40s"},
        {"name": "far", "state": "RUNNING", "instances": 1, "language": "python",
         "hosts": ["h2"], "events": {"queued": 2, "leased": 0, "dead": 0}},
        {"name": "gone", "hosts": [], "events": {"queued": 4, "leased": 0, "dead": 0}},
    ],
    "hosts": {
        "h3": {"address": "10.213.0.4", "state": "lost", "since": NOW - 30,
               "lastHeard": NOW - 30, "functions": {"gone": {}}},
        "main": {"address": "10.213.0.1", "state": "joined", "since": NOW - 600,
                 "lastHeard": NOW, "local": True,
                 "functions": {"echo": {"workers": 1, "instances": 2, "inFlight": 1}}},
        "h2": {"address": "10.213.0.2", "state": "joined", "since": NOW - 500,
               "lastHeard": NOW - 0.4, "functions": {
                   "echo": {"workers": 1, "instances": 1, "inFlight": 0},
                   "far": {"workers": 1, "instances": 1, "inFlight": 0}}},
    },
}


def lines_of(capsys):
    return capsys.readouterr().out.splitlines()


def test_a_cluster_shows_the_hosts_of_each_function_and_each_host(capsys):
    cli.render_ls(CLUSTER, None, NOW)
    out = lines_of(capsys)
    header = out[0].split()
    assert header == ["NAME", "STATE", "INSTANCES", "LANGUAGE", "QUEUED", "RUNNING", "DEAD",
                      "HOSTS", "REASON"]
    rows = {line.split()[0]: line.split() for line in out[1:4]}
    assert rows["echo"][7] == "main,h2" and rows["far"][7] == "h2"
    assert rows["gone"][1] == "-" and rows["gone"][7] == "-"
    hosts_at = out.index(next(line for line in out if line.startswith("HOST ")))
    assert out[hosts_at - 1] == ""
    assert out[hosts_at].split() == ["HOST", "ADDRESS", "STATE", "LAST", "HEARD", "FUNCTIONS"]
    hosts = out[hosts_at + 1:]
    # This host first, then the others by name.
    assert hosts[0].startswith("main (this host)") and "10.213.0.1" in hosts[0]
    assert "echo (1 workers, 2 instances, 1 in flight)" in hosts[0]
    assert hosts[1].split()[:5] == ["h2", "10.213.0.2", "joined", "0.4s", "ago"]
    assert "echo (1 workers, 1 instances, 0 in flight), far (1 workers" in hosts[1]
    assert hosts[2].split()[:5] == ["h3", "10.213.0.4", "lost", "30.0s", "ago"]


def test_a_narrow_terminal_wraps_the_last_column_and_cuts_nothing(capsys):
    cli.render_ls(CLUSTER, 70, NOW)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 70, out
    flat = "".join(out.split())
    assert "far(1workers,1instances,0inflight)" in flat


def test_a_single_host_shows_no_hosts(capsys):
    single = {"status": "ok", "functions": [dict(CLUSTER["functions"][0], hosts=["main"])],
              "hosts": {"main": CLUSTER["hosts"]["main"]}}
    for body in (single, {k: v for k, v in single.items() if k != "hosts"}):
        cli.render_ls(body, None, NOW)
        out = lines_of(capsys)
        assert "HOSTS" not in out[0] and len(out) == 2, out


def test_ls_json_passes_the_hosts_through(monkeypatch, capsys):
    class FakeHost:
        def get_json(self, path, params=None):
            assert path == "/api/functions"
            return CLUSTER

    monkeypatch.setattr(cli.Host, "from_args", classmethod(lambda cls, args: FakeHost()))
    assert cli.main(["ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == CLUSTER


def test_the_function_list_resource_passes_the_hosts_on(tmp_path):
    import falcon
    import falcon.testing

    from sora.gateway.records_api import FunctionListResource, Store

    health = {"status": "ok", "functions": {"echo": {"state": "RUNNING", "hosts": ["main"]}},
              "hosts": CLUSTER["hosts"]}

    class StatusClient:
        async def status(self, request_id, timeout=3.0):
            return json.dumps(health).encode()

    app = falcon.asgi.App()
    app.add_route("/api/functions", FunctionListResource(StatusClient(), Store(str(tmp_path))))
    body = falcon.testing.TestClient(app).simulate_get("/api/functions").json
    assert body["hosts"] == CLUSTER["hosts"]
    assert body["functions"][0]["hosts"] == ["main"]


def test_a_common_option_before_the_command_says_where_it_goes(capsys):
    # `sora --host URL ls` (as one writes it for many CLIs) gets where the option goes, not
    # argparse's "invalid choice: 'http://…'".
    assert cli.main(["--host", "http://10.0.0.1:8080", "ls"]) == 2
    err = capsys.readouterr().err
    assert "--host goes after the command: sora COMMAND --host http://10.0.0.1:8080" in err
