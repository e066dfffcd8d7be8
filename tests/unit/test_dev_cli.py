"""`sora dev`'s own host config: which folders it serves, where its state goes, and that
the config it writes is one Sora loads."""
from __future__ import annotations

import pytest

from sora.cli import dev
from sora.cli.host import CliError
from sora.config import load_host_config


def function(folder):
    folder.mkdir(parents=True)
    (folder / "index.js").write_text("exports.handler = async () => 'ok';\n")
    (folder / "sora.yaml").write_text(f"name: {folder.name}\nlanguage: nodejs\n"
                                      "entrypoint: index.js\n"
                                      "handler: handler\ntrigger: http\n")
    return folder


def test_a_folder_of_functions_serves_each_and_keeps_state_beside_them(tmp_path):
    function(tmp_path / "b")
    function(tmp_path / "a")
    (tmp_path / "node_modules/x").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    assert dev.function_folders(str(tmp_path)) == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert dev.default_state_dir(str(tmp_path)) == str(tmp_path / ".sora")


def test_a_function_folder_keeps_its_state_outside_itself(tmp_path, monkeypatch):
    folder = function(tmp_path / "hello")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/u")   # not made: only named
    assert dev.function_folders(str(folder)) == [str(folder)]
    state = dev.default_state_dir(str(folder))
    assert state.startswith("/var/cache/u/sora/dev/hello-")
    assert state == dev.default_state_dir(str(folder))   # the same at every run


def test_a_state_dir_too_long_for_sockets_goes_to_the_temp_dir(tmp_path, monkeypatch):
    folder = function(tmp_path / "hello")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ("c" * 80)))
    state = dev.default_state_dir(str(folder))
    assert len(state) <= dev.STATE_DIR_MAX and state.startswith("/tmp/sora-dev-")


def test_the_written_config_loads_with_its_functions(tmp_path, monkeypatch):
    folder = function(tmp_path / "hello")
    state = str(tmp_path / "state")
    path = dev.write_host_config(str(folder), [str(folder)], state, 18080, "127.0.0.1")
    config = load_host_config(path)
    assert [fn.name for fn in config.functions] == ["hello"] and not config.broken
    assert (config.server.httpPort, config.server.bind, config.stateDir) == \
        (18080, "127.0.0.1", state)
    assert not config.apiKeys


def test_ports(monkeypatch):
    monkeypatch.setattr(dev, "port_free", lambda bind, port: False)
    assert dev.choose_port("127.0.0.1", None) != dev.DEFAULT_PORT
    assert dev.choose_port("127.0.0.1", 9999) == 9999
    assert dev.choose_port("127.0.0.1", 0) > 0


def test_no_function_folder_is_a_usage_error(tmp_path):
    args = type("Args", (), {"path": str(tmp_path), "state_dir": None, "port": 0,
                             "bind": "127.0.0.1"})()
    with pytest.raises(CliError) as caught:
        dev.cmd_dev(args)
    assert caught.value.exit_code == 2 and "sora init" in str(caught.value)
