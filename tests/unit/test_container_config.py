"""`isolation: container`, `image`, `package`, `taskRoot` and `server.docker`: what they take,
and errors that name the file, the field and what was expected."""
import textwrap

import pytest

from sora import config_snapshot
from sora.config import (ConfigError, function_from_data, load_function_config,
                         load_host_config, settings_markdown)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def function(base, lines, folder="fn", files=("index.js",)):
    for name in files:
        write(base / folder / name, "exports.handler = async () => 1;\n")
    write(base / folder / "sora.yaml", "\n".join([f"name: {folder}", *lines]) + "\n")
    return base / folder


def problems(base, lines, **kw):
    with pytest.raises(ConfigError) as exc:
        load_function_config(function(base, lines, **kw))
    return str(exc.value)


NODE_IN_CONTAINER = ["language: nodejs", "handler: index.handler", "isolation: container",
                     "image: sora-test/node20:1"]


def test_container_function_gets_its_defaults(tmp_path):
    fn = load_function_config(function(tmp_path, NODE_IN_CONTAINER))
    assert fn.containerized and not fn.sandboxed
    assert fn.image == "sora-test/node20:1" and fn.package == "zip"
    assert fn.taskRoot == "/var/task" and fn.entrypoint == "index.js"
    assert fn.runtime is None   # the image's `node` (the worker's runtime chooses)


def test_sandbox_is_still_the_default_and_not_containerized(tmp_path):
    fn = load_function_config(function(tmp_path, ["language: nodejs",
                                                  "handler: index.handler"]))
    assert fn.isolation == "sandbox" and fn.sandboxed and not fn.containerized
    assert fn.image is None and fn.package == "zip"


def test_container_needs_an_image(tmp_path):
    text = problems(tmp_path, ["language: nodejs", "handler: index.handler",
                               "isolation: container"])
    path = tmp_path / "fn" / "sora.yaml"
    assert f"{path}: image: required field is missing with isolation: container" in text


@pytest.mark.parametrize("image", ["Upper:1", "a b", "name:", ":tag", "x:" + "t" * 200, 5])
def test_a_malformed_image_name_is_refused(tmp_path, image):
    text = problems(tmp_path, [*NODE_IN_CONTAINER[:3], f"image: {image!r}"
                               if isinstance(image, str) else f"image: {image}"])
    assert f"{tmp_path / 'fn' / 'sora.yaml'}: image: expected an image name NAME[:TAG]" in text


@pytest.mark.parametrize("image", ["node", "my-fn:1", "team/my-fn:2024.01-rc1",
                                   "localhost:5000/team/fn:3",
                                   "fn@sha256:" + "a" * 64])
def test_image_names_the_engine_takes(tmp_path, image):
    fn = load_function_config(function(tmp_path, [*NODE_IN_CONTAINER[:3], f"image: '{image}'"]))
    assert fn.image == image


def test_image_and_task_root_only_with_container(tmp_path):
    text = problems(tmp_path, ["language: nodejs", "handler: index.handler", "image: fn:1",
                               "taskRoot: /srv/app"])
    path = tmp_path / "fn" / "sora.yaml"
    assert f"{path}: image: expected no image unless isolation is container (it is " \
           f"'sandbox'), got 'fn:1'" in text
    assert f"{path}: taskRoot: expected no taskRoot unless isolation is container" in text


@pytest.mark.parametrize("root", ["relative/path", "/", "/tmp/task", "/run/sora", "/proc",
                                  "/var/../tmp", "/opt/sora/x"])
def test_task_root_must_be_a_folder_of_its_own(tmp_path, root):
    text = problems(tmp_path, [*NODE_IN_CONTAINER, f"taskRoot: '{root}'"])
    assert f"{tmp_path / 'fn' / 'sora.yaml'}: taskRoot: expected an absolute" in text


def test_task_root_is_normalised(tmp_path):
    fn = load_function_config(function(tmp_path, [*NODE_IN_CONTAINER, "taskRoot: /srv/app/"]))
    assert fn.taskRoot == "/srv/app"


def test_writable_folder_and_file_triggers_are_refused_in_a_container(tmp_path):
    (tmp_path / "fn" / "inbox").mkdir(parents=True)
    text = problems(tmp_path, [*NODE_IN_CONTAINER, "writableFolder: true",
                               "trigger: [http, {file: {path: ./inbox}}]"])
    path = tmp_path / "fn" / "sora.yaml"
    assert f"{path}: writableFolder: expected false with isolation: container" in text
    assert f"{path}: trigger[1].file: expected no file trigger with isolation: container" \
        in text


def test_provided_is_not_run_in_a_container(tmp_path):
    text = problems(tmp_path, ["language: provided", "isolation: container", "image: x:1"],
                    files=("bootstrap",))
    assert "isolation: expected 'sandbox' or 'none' for language provided" in text


def test_unknown_isolation_lists_the_three(tmp_path):
    text = problems(tmp_path, ["language: nodejs", "handler: index.handler",
                               "isolation: docker"])
    assert "isolation: expected 'sandbox' (bubblewrap" in text and "'container'" in text


def test_package_image_implies_container_and_needs_no_language(tmp_path):
    fn = load_function_config(function(tmp_path, ["package: image", "image: my-fn:1"],
                                       files=()))
    assert fn.package == "image" and fn.containerized and fn.language == "image"
    assert fn.handler == "" and fn.entrypoint == ""   # the image's CMD runs


def test_package_image_handler_replaces_cmd(tmp_path):
    fn = load_function_config(function(tmp_path, ["package: image", "image: my-fn:1",
                                                  "handler: app.other", "isolation: container",
                                                  "language: image"], files=()))
    assert fn.handler == "app.other" and fn.language == "image"


def test_package_image_refuses_what_the_image_decides(tmp_path):
    text = problems(tmp_path, ["package: image", "image: my-fn:1", "language: nodejs",
                               "entrypoint: index.js", "runtime: node", "isolation: sandbox"])
    path = tmp_path / "fn" / "sora.yaml"
    assert f"{path}: language: expected no language with package: image" in text
    assert f"{path}: entrypoint: expected no entrypoint with package: image" in text
    assert f"{path}: runtime: expected no runtime with package: image" in text
    assert f"{path}: isolation: expected 'container' (or none given) with package: image, " \
           f"got 'sandbox'" in text


def test_package_image_needs_its_image(tmp_path):
    text = problems(tmp_path, ["package: image"], files=())
    assert "image: required field is missing with isolation: container" in text


def test_unknown_package(tmp_path):
    text = problems(tmp_path, [*NODE_IN_CONTAINER, "package: tarball"])
    assert f"{tmp_path / 'fn' / 'sora.yaml'}: package: expected 'zip' (the function's code " \
           f"is its folder) or 'image'" in text


def test_a_zip_function_still_needs_its_language(tmp_path):
    text = problems(tmp_path, ["handler: index.handler"])
    assert "language: required field is missing (runtime language: `nodejs`, `python`, or " \
           "`provided`" in text


def test_language_image_needs_package_image(tmp_path):
    text = problems(tmp_path, ["language: image", "isolation: container", "image: x:1"])
    assert "language: expected one of: nodejs, python, provided with package: zip" in text


def test_snapshot_round_trip_keeps_the_container_fields(tmp_path):
    fn = load_function_config(function(tmp_path, [*NODE_IN_CONTAINER, "taskRoot: /srv/app"]))
    path = tmp_path / "snapshot.json"
    config_snapshot.write(str(path), [fn], [])
    (again,), _ = config_snapshot.read(str(path))
    assert again == fn and again.containerized


def test_managed_function_data_takes_the_same_rules(tmp_path):
    write(tmp_path / "code" / "app.py", "def handler(e, c): return 1\n")
    with pytest.raises(ConfigError) as exc:
        function_from_data(str(tmp_path / "code"), "function.json",
                           {"name": "m", "language": "python", "handler": "app.handler",
                            "isolation": "container"}, "digest", managed=True)
    assert "function.json: image: required field is missing" in str(exc.value)


def host(base, extra=""):
    function(base, NODE_IN_CONTAINER)
    return write(base / "host-config.yaml", f"""\
        functionPaths: [fn]
        stateDir: state
        server:
          httpPort: 8080
        {extra}
    """)


def test_docker_socket_default(tmp_path):
    config = load_host_config(str(host(tmp_path)))
    assert config.server.docker.socket == "/var/run/docker.sock"
    assert config.functions[0].containerized


def test_docker_socket_relative_to_the_config(tmp_path):
    path = write(tmp_path / "host-config.yaml", """\
        functionPaths: [fn]
        server:
          httpPort: 8080
          docker: {socket: run/engine.sock}
    """)
    function(tmp_path, NODE_IN_CONTAINER)
    config = load_host_config(str(path))
    assert config.server.docker.socket == str(tmp_path / "run" / "engine.sock")


def test_docker_settings_errors_name_the_field(tmp_path):
    path = write(tmp_path / "host-config.yaml", """\
        functionPaths: [fn]
        server:
          httpPort: 8080
          docker: {socket: 5, sockit: x}
    """)
    function(tmp_path, NODE_IN_CONTAINER)
    with pytest.raises(ConfigError) as exc:
        load_host_config(str(path))
    text = str(exc.value)
    assert f"{path}: server.docker.socket: expected a file or folder path, got 5" in text
    assert f"{path}: server.docker.sockit: unknown field; did you mean 'socket'?" in text
    write(tmp_path / "host-config.yaml", """\
        functionPaths: [fn]
        server: {httpPort: 8080, docker: /var/run/docker.sock}
    """)
    with pytest.raises(ConfigError) as exc:
        load_host_config(str(path))
    assert "server.docker: expected a mapping of settings" in str(exc.value)


def test_a_container_function_may_not_hold_the_hosts_files(tmp_path):
    path = write(tmp_path / "host-config.yaml", """\
        functionPaths: [fn]
        stateDir: fn/state
        server: {httpPort: 8080}
    """)
    function(tmp_path, NODE_IN_CONTAINER)
    config = load_host_config(str(path))
    assert not config.functions
    assert "stateDir: expected a path outside the function folder" in config.broken[0].reason
    assert "its container would show it to the function" in config.broken[0].reason


def test_the_reference_documents_the_new_settings():
    text = settings_markdown()
    for name in ("`image`", "`package`", "`taskRoot`", "host-config.yaml `server.docker:`",
                 "`socket`"):
        assert name in text
