"""host-config.yaml `cluster:`: each rule's error names the file, the field and what was
expected."""
import os

import pytest

from sora.cluster.keys import HOST_CERT, add_allowed, init_keys
from sora.config import ConfigError, load_host_config


def config(tmp_path, cluster: str):
    path = tmp_path / "host-config.yaml"
    path.write_text("functionPaths: [fn]\nserver: {httpPort: 8080}\n" + cluster)
    return str(path)


def problems(tmp_path, cluster: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_host_config(config(tmp_path, cluster))
    return str(exc.value)


def test_no_cluster_section_is_a_host_alone(tmp_path):
    host = load_host_config(config(tmp_path, ""))
    assert host.cluster.listen is None and host.cluster.controlPlane is None
    assert host.cluster.name   # the machine's name


def test_main_host(tmp_path):
    ring = init_keys(str(tmp_path / "keys"))
    host = load_host_config(config(tmp_path, "cluster:\n  listen: tcp://0.0.0.0:7100\n"
                                   "  keys: keys\n  name: main\n"))
    assert host.cluster.keys == ring.directory and host.cluster.name == "main"
    assert host.cluster.records_listen == "tcp://0.0.0.0:7101"


def test_joined_host_finds_the_main_hosts_key(tmp_path):
    ring = init_keys(str(tmp_path / "keys"))
    main = init_keys(str(tmp_path / "main-keys"))
    text = ("cluster:\n  controlPlane: tcp://10.0.0.1:7100\n  advertise: 10.0.0.2\n"
            "  keys: keys\n")
    # Only its own certificate on the allow-list: which one is the main host's?
    assert "cluster.controlPlaneKey: required when the allow-list does not hold exactly one " \
           "other host's certificate" in problems(tmp_path, text)
    add_allowed(ring.directory, os.path.join(main.directory, HOST_CERT), "main")
    host = load_host_config(config(tmp_path, text))
    assert host.cluster.controlPlaneKey == main.public
    assert host.cluster.records_endpoint == "tcp://10.0.0.1:7101"
    assert "cluster.controlPlaneKey: expected the name of a certificate in" in problems(
        tmp_path, text + "  controlPlaneKey: other\n")
    host = load_host_config(config(tmp_path, text + "  controlPlaneKey: main\n"))
    assert host.cluster.controlPlaneKey == main.public


@pytest.mark.parametrize("cluster, expected", [
    ("  listen: tcp://0.0.0.0:7100\n", "cluster.keys: required when cluster.listen is set"),
    ("  controlPlane: tcp://10.0.0.1:7100\n  advertise: 10.0.0.2\n",
     "cluster.keys: required when cluster.controlPlane is set"),
    ("  controlPlane: tcp://10.0.0.1:7100\n  keys: keys\n",
     "cluster.advertise: required when cluster.controlPlane is set"),
    ("  listen: tcp://0.0.0.0:7100\n  controlPlane: tcp://10.0.0.1:7100\n  advertise: a\n"
     "  keys: keys\n", "cluster.controlPlane: expected either listen"),
    ("  listen: 0.0.0.0:7100\n  keys: keys\n",
     "cluster.listen: expected a ZeroMQ tcp endpoint tcp://ADDRESS:PORT"),
    ("  listen: tcp://0.0.0.0:65535\n  keys: keys\n",
     "cluster.listen: expected a ZeroMQ tcp endpoint tcp://ADDRESS:PORT (PORT from 1 to 65534)"),
    ("  controlPlane: ipc:///tmp/x\n  advertise: a\n  keys: keys\n",
     "cluster.controlPlane: expected a ZeroMQ tcp endpoint"),
    ("  listen: tcp://0.0.0.0:7100\n  keys: keys\n  advertise: tcp://a:1\n",
     "cluster.advertise: expected a host name or IP address (no scheme, no port)"),
    ("  listen: tcp://0.0.0.0:7100\n  keys: keys\n  name: 'a b'\n",
     "cluster.name: expected a host name of letters"),
    ("  listen: tcp://0.0.0.0:7100\n  keys: missing\n",
     "cluster.keys: {tmp}/missing: expected a keys folder made by `sora keys init"),
    ("  lisen: tcp://0.0.0.0:7100\n", "cluster.lisen: unknown field; did you mean 'listen'?"),
    ("  listen: tcp://0.0.0.0:7100\n  keys: keys\n  controlPlaneKey: main\n",
     "cluster.controlPlaneKey: expected only with cluster.controlPlane"),
])
def test_cluster_errors(tmp_path, cluster, expected):
    init_keys(str(tmp_path / "keys"))
    text = problems(tmp_path, "cluster:\n" + cluster)
    path = tmp_path / "host-config.yaml"
    assert f"{path}: " + expected.format(tmp=tmp_path) in text


def test_keys_folder_checked_at_load(tmp_path):
    init_keys(str(tmp_path / "keys"))
    os.chmod(tmp_path / "keys", 0o750)
    assert "cluster.keys: " + str(tmp_path / "keys") + ": expected mode 0700" in problems(
        tmp_path, "cluster:\n  listen: tcp://0.0.0.0:7100\n  keys: keys\n")
    os.chmod(tmp_path / "keys", 0o700)
    os.unlink(tmp_path / "keys" / "host.key_secret")
    assert "host.key_secret is missing" in problems(
        tmp_path, "cluster:\n  listen: tcp://0.0.0.0:7100\n  keys: keys\n")
