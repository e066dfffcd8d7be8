"""sora.deploy.store and sora.config's loading of the functions it holds."""
import io
import json
import os
import zipfile

import pytest
import yaml

from sora.config import load_host_config
from sora.deploy.store import ManagedStore, StoreError
from sora.deploy.zip_code import ZipLimits, ZipRefused

NODE = {"language": "nodejs", "handler": "index.handler", "timeout": 3, "memory": 128}


def make_zip(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def host(tmp_path):
    """A host config with one functionPaths function `onfolder`, and its store."""
    folder = tmp_path / "fns" / "onfolder"
    folder.mkdir(parents=True)
    (folder / "index.js").write_text("exports.handler = async () => 1;")
    (folder / "sora.yaml").write_text(yaml.safe_dump({
        "name": "onfolder", "language": "nodejs", "handler": "index.handler"}))
    config = tmp_path / "host-config.yaml"
    config.write_text(yaml.safe_dump({"functionPaths": [str(folder)],
                                      "server": {"httpPort": 8080},
                                      "stateDir": str(tmp_path / "state")}))
    return config, ManagedStore(str(tmp_path / "state"), ZipLimits())


def test_created_function_is_loaded_with_the_others(host):
    config, store = host
    document = store.create("made", make_zip({"index.js": "exports.handler = 1"}),
                            {**NODE, "env": {"A": "1"}}, {"Runtime": "nodejs20.x"})
    assert document["lambda"]["CodeSize"] > 0 and document["lambda"]["RevisionId"]
    loaded = load_host_config(str(config))
    made = loaded.function("made")
    assert made.managed and made.directory == store.code_dir("made")
    assert made.entrypoint == "index.js" and made.handler == "handler"
    assert made.timeout == 3.0 and made.memory == 128 and made.env == {"A": "1"}
    assert made.source == os.path.join(store.folder("made"), "function.json")
    assert made.sandboxed and not loaded.function("onfolder").managed
    assert sorted(store.names()) == ["made"]


def test_a_handler_naming_no_file_is_refused_with_nothing_written(host):
    _, store = host
    with pytest.raises(StoreError) as caught:
        store.create("made", make_zip({"app.js": "1"}), NODE, {})
    assert caught.value.error_type == "InvalidParameterValueException"
    assert "handler" in str(caught.value) and "index.js" in str(caught.value)
    assert ".upload-" not in str(caught.value) and store.names() == []
    assert [e for e in os.listdir(store.root) if not e.startswith((".lock", ".trash"))] == []


def test_a_refused_zip_leaves_nothing(host):
    _, store = host
    with pytest.raises(ZipRefused):
        store.create("made", make_zip({"../x.js": "1"}), NODE, {})
    assert sorted(os.listdir(store.root)) == [".trash"]


def test_create_twice_is_a_conflict(host):
    _, store = host
    store.create("made", make_zip({"index.js": "1"}), NODE, {})
    with pytest.raises(StoreError) as caught:
        store.create("made", make_zip({"index.js": "2"}), NODE, {})
    assert caught.value.error_type == "ResourceConflictException"


def test_update_code_and_config_then_delete(host):
    config, store = host
    store.create("made", make_zip({"index.js": "1"}), NODE, {"Description": "d"})
    first = store.read("made")["lambda"]
    store.update_code("made", make_zip({"index.js": "2", "more.js": "3"}), {})
    assert sorted(os.listdir(store.code_dir("made"))) == ["index.js", "more.js"]
    assert len(os.listdir(store.trash)) == 1   # the old code, for instances still on it
    second = store.read("made")["lambda"]
    assert second["CodeSha256"] != first["CodeSha256"] and second["Description"] == "d"
    store.update_config("made", {"timeout": 10, "env": {"B": "2"}}, {})
    assert load_host_config(str(config)).function("made").timeout == 10.0
    with pytest.raises(StoreError) as caught:
        store.update_config("made", {"handler": "nothere.handler"}, {})
    assert caught.value.error_type == "InvalidParameterValueException"
    assert store.read("made")["config"]["handler"] == "index.handler"
    store.delete("made")
    assert store.names() == [] and load_host_config(str(config)).function("made") is None
    with pytest.raises(StoreError) as caught:
        store.delete("made")
    assert caught.value.error_type == "ResourceNotFoundException"


def test_a_managed_function_named_as_a_folder_one_is_broken(host):
    config, store = host
    store.create("onfolder", make_zip({"index.js": "1"}), NODE, {})
    loaded = load_host_config(str(config))
    assert not loaded.function("onfolder").managed
    assert any(b.name == "onfolder" and "already used" in b.reason for b in loaded.broken)


def test_function_json_is_validated_as_sora_yaml(host):
    config, store = host
    store.create("made", make_zip({"index.js": "1"}), NODE, {})
    path = os.path.join(store.folder("made"), "function.json")
    document = json.load(open(path))
    document["config"]["timeout"] = 5000
    json.dump(document, open(path, "w"))
    broken = {b.name: b for b in load_host_config(str(config)).broken}
    assert "timeout: expected" in broken["made"].reason and path in broken["made"].reason
