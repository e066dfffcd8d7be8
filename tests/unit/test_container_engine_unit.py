"""sora.containers.engine and labels without an engine: labels, host ids, and the reasons
given when no engine answers (the real engine's cases are in
tests/integration/test_container_engine.py)."""
import socket

import pytest

from sora.containers import engine, labels


def test_labels_name_host_function_worker_and_role():
    assert engine.labels("h1", "fn", 42, "instance") == {
        "sora.host": "h1", "sora.function": "fn", "sora.worker": "42", "sora.role": "instance"}
    with pytest.raises(ValueError):
        engine.labels("h1", "fn", 42, "other")


def test_host_id_is_stable_per_state_dir(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    first = engine.host_id(str(tmp_path / "a"))
    assert first == engine.host_id(str(tmp_path / "a")) == engine.host_id(str(tmp_path / "link"))
    assert first != engine.host_id(str(tmp_path / "b"))
    assert len(first) == 16 and int(first, 16) >= 0


def test_selector_of_host_and_worker():
    assert labels.selector("h") == ["sora.host=h"]
    assert labels.selector("h", 7) == ["sora.host=h", "sora.worker=7"]


def test_nothing_at_the_socket(tmp_path):
    path = str(tmp_path / "docker.sock")
    with pytest.raises(engine.EngineUnavailable) as exc:
        engine.check(path, "x:1")
    assert str(exc.value).startswith(f"no Docker engine answers at {path}: nothing at that path")


def test_not_a_socket(tmp_path):
    (tmp_path / "docker.sock").write_text("")
    with pytest.raises(engine.EngineUnavailable, match="the path is not a socket"):
        engine.check(str(tmp_path / "docker.sock"), "x:1")


def test_a_socket_nobody_listens_on(tmp_path):
    path = str(tmp_path / "docker.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)   # bound, never listening: connect is refused
    try:
        with pytest.raises(engine.EngineUnavailable, match="connection refused"):
            engine.check(path, "x:1")
    finally:
        dead.close()


def test_a_socket_that_answers_no_http(tmp_path):
    path = str(tmp_path / "docker.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    try:
        with pytest.raises(engine.EngineUnavailable) as exc:
            engine.client(path, timeout=0.5)
        assert f"no Docker engine answers at {path}: " in str(exc.value)
    finally:
        server.close()


def test_shown_image_adds_the_default_tag():
    assert engine.shown_image("fn") == "fn:latest"
    assert engine.shown_image("fn:1") == "fn:1"
    assert engine.shown_image("localhost:5000/fn") == "localhost:5000/fn:latest"
    assert engine.shown_image("fn@sha256:" + "a" * 64).startswith("fn@sha256:")
    assert str(engine.ImageMissing("fn")) == \
        "image 'fn:latest' is not in the local Docker engine (docker images)"
