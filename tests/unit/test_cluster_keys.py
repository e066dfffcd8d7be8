"""The keys folder (sora keys init/add/show) and the CURVE sockets made from it."""
import logging
import os
import stat
import time

import pytest
import zmq

from sora.cli.main import main as sora
from sora.cluster import keys as k


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_makes_a_private_folder_with_a_key_pair_and_an_allow_list(tmp_path):
    ring = k.init_keys(str(tmp_path / "keys"))
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / k.HOST_SECRET) == 0o600
    assert (tmp_path / "keys" / "allowed").is_dir()
    # Its own key is allowed, so its own processes may connect to its servers.
    assert ring.allowed_keys() == {"host": ring.public}
    with pytest.raises(k.KeysError, match="already holds a key pair"):
        k.init_keys(str(tmp_path / "keys"))


def test_load_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(k.KeysError, match="expected a keys folder made by `sora keys init"):
        k.load_keys(str(tmp_path / "none"))
    k.init_keys(str(tmp_path / "keys"))
    os.chmod(tmp_path / "keys", 0o755)
    with pytest.raises(k.KeysError, match="expected mode 0700.*got 0755"):
        k.load_keys(str(tmp_path / "keys"))
    os.chmod(tmp_path / "keys", 0o700)
    os.chmod(tmp_path / "keys" / k.HOST_SECRET, 0o644)
    with pytest.raises(k.KeysError, match="expected mode 0600"):
        k.load_keys(str(tmp_path / "keys"))
    os.chmod(tmp_path / "keys" / k.HOST_SECRET, 0o600)
    (tmp_path / "keys" / k.HOST_SECRET).write_text("not a certificate")
    with pytest.raises(k.KeysError, match="expected a CURVE certificate"):
        k.load_keys(str(tmp_path / "keys"))
    os.unlink(tmp_path / "keys" / k.HOST_SECRET)
    with pytest.raises(k.KeysError, match="host.key_secret is missing"):
        k.load_keys(str(tmp_path / "keys"))


def test_add_takes_public_certificates_only(tmp_path):
    a = k.init_keys(str(tmp_path / "a"))
    b = k.init_keys(str(tmp_path / "b"))
    k.add_allowed(a.directory, os.path.join(b.directory, k.HOST_CERT), name="b")
    assert a.allowed_keys()["b"] == b.public
    with pytest.raises(k.KeysError, match="expected a public certificate, got a secret one"):
        k.add_allowed(a.directory, os.path.join(b.directory, k.HOST_SECRET), name="c")
    with pytest.raises(k.KeysError, match="already holds another key named 'b'"):
        k.add_allowed(a.directory, os.path.join(a.directory, k.HOST_CERT), name="b")
    # Another host's host.key copied as is, without --name: its name would be this host's own.
    with pytest.raises(k.KeysError, match="is this host's own key; give the other host's "
                                          "certificate a name of its own with --name"):
        k.add_allowed(a.directory, os.path.join(b.directory, k.HOST_CERT))
    with pytest.raises(k.KeysError, match="expected a CURVE certificate"):
        k.add_allowed(a.directory, str(tmp_path / "missing.key"))


def test_cli_init_add_show(tmp_path, capsys):
    assert sora(["keys", "init", str(tmp_path / "a")]) == 0
    assert sora(["keys", "init", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert sora(["keys", "add", str(tmp_path / "a"), str(tmp_path / "b" / "host.key"),
                 "--name", "worker-1"]) == 0
    assert (tmp_path / "a" / "allowed" / "worker-1.key").exists()
    assert sora(["keys", "show", str(tmp_path / "a"), "--json"]) == 0
    out = capsys.readouterr().out
    assert k.load_keys(str(tmp_path / "a")).public.decode() in out and "worker-1" in out
    assert sora(["keys", "show", str(tmp_path / "missing")]) == 2
    assert "expected a keys folder" in capsys.readouterr().err


def test_cli_api_key_named_like_a_subcommand(tmp_path, capsys):
    config = tmp_path / "host-config.yaml"
    config.write_text("functionPaths: [fn]\nserver: {httpPort: 8080}\nauth:\n  apiKeys:\n"
                      "    - {name: init, scopes: [admin], key: abcdefghijklmnopqrstu}\n")
    assert sora(["keys", "--api", "init", "--config", str(config)]) == 0
    assert "abcdefghijklmnopqrstu" in capsys.readouterr().out


def test_curve_server_takes_allowed_keys_and_logs_refusals(tmp_path, caplog):
    server = k.init_keys(str(tmp_path / "server"))
    friend = k.init_keys(str(tmp_path / "friend"))
    stranger = k.init_keys(str(tmp_path / "stranger"))
    k.add_allowed(server.directory, os.path.join(friend.directory, k.HOST_CERT), "friend")
    ctx = zmq.Context()
    auth = k.start_authenticator(ctx, server)
    sock = k.server_socket(ctx, zmq.ROUTER, server)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    clients = []
    try:
        for ring in (friend, stranger):
            c = k.client_socket(ctx, zmq.DEALER, ring, server.public)
            c.connect(f"tcp://127.0.0.1:{port}")
            c.send(ring.directory.encode())
            clients.append(c)
        with caplog.at_level(logging.WARNING, logger="sora.cluster.keys"):
            assert sock.poll(3000)
            assert sock.recv_multipart()[1] == friend.directory.encode()
            deadline = time.monotonic() + 3
            while "refused" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not sock.poll(300)   # the stranger's message never arrives
        assert "refused a connection from 127.0.0.1" in caplog.text
        assert f"its key {stranger.public.decode()} is not on the allow-list" in caplog.text
        # ... and what to do about it: add the key, then restart (the list is read at start).
        assert f"`sora keys add {server.directory} ITS_HOST.key --name NAME`, then restart" \
            in caplog.text
    finally:
        for c in clients:
            c.close(0)
        sock.close(0)
        auth.stop()
        ctx.term()


def test_the_asyncio_authenticator_enforces_the_same_allow_list(tmp_path, caplog):
    """For processes on asyncio (a gateway): zmq.auth's AsyncioAuthenticator, same logging."""
    import asyncio

    import zmq.asyncio

    server = k.init_keys(str(tmp_path / "server"))
    stranger = k.init_keys(str(tmp_path / "stranger"))

    async def scenario():
        ctx = zmq.asyncio.Context()
        auth = k.start_authenticator(ctx, server, use_asyncio=True)
        sock = k.server_socket(ctx, zmq.ROUTER, server)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        own = k.client_socket(ctx, zmq.DEALER, server, server.public)   # its own key: allowed
        bad = k.client_socket(ctx, zmq.DEALER, stranger, server.public)
        try:
            for c in (own, bad):
                c.connect(f"tcp://127.0.0.1:{port}")
            await own.send(b"own")
            await bad.send(b"bad")
            frames = await asyncio.wait_for(sock.recv_multipart(), 3)
            assert frames[1] == b"own"
            deadline = time.monotonic() + 3
            while "refused a connection" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not await sock.poll(300)
        finally:
            for s in (own, bad, sock):
                s.close(0)
            auth.stop()
            ctx.term()

    with caplog.at_level(logging.WARNING, logger="sora.cluster.keys"):
        asyncio.run(scenario())
    assert "refused a connection from 127.0.0.1: its key " + stranger.public_text in caplog.text
