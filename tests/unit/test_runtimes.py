"""Per-language configuration and how each runtime finds what its instances run."""
import os
import stat
import sys

import pytest

from sora.config import ConfigError, load_function_config
from sora.runtimes import runtime_for
from sora.runtimes.python import default_python


def folder(tmp_path, yaml_text, files=()):
    d = tmp_path / "fn"
    d.mkdir(exist_ok=True)
    for name in files:
        (d / name).write_text("x = 1\n")
    (d / "sora.yaml").write_text(yaml_text)
    return d


def test_python_function_loads(tmp_path):
    fn = load_function_config(folder(tmp_path, "name: fn\nlanguage: python\nentrypoint: app.py\n"
                                     "handler: lambda_handler\n", ["app.py"]))
    assert fn.language == "python" and fn.runtime is None and fn.handler == "lambda_handler"


def test_python_entrypoint_must_be_a_py_file(tmp_path):
    d = folder(tmp_path, "name: fn\nlanguage: python\nentrypoint: app.js\n", ["app.js"])
    with pytest.raises(ConfigError) as exc:
        load_function_config(d)
    assert f"{d / 'sora.yaml'}: entrypoint: expected a .py file for language python, " \
           f"got 'app.js'" in str(exc.value)


def test_python_needs_an_entrypoint(tmp_path):
    with pytest.raises(ConfigError, match="entrypoint: required field is missing for language "
                                          "python"):
        load_function_config(folder(tmp_path, "name: fn\nlanguage: python\n"))


def test_handler_must_be_a_name_for_nodejs_and_python(tmp_path):
    d = folder(tmp_path, "name: fn\nlanguage: python\nentrypoint: app.py\nhandler: a-b\n",
               ["app.py"])
    with pytest.raises(ConfigError, match="handler: expected the name of a function"):
        load_function_config(d)


def test_provided_defaults_to_bootstrap_and_takes_any_handler(tmp_path):
    # The executable need not exist yet: setup may build it.
    fn = load_function_config(folder(tmp_path, "name: fn\nlanguage: provided\n"
                                     "handler: src/app.main\n"))
    assert fn.entrypoint == "bootstrap" and fn.handler == "src/app.main"


def test_provided_takes_no_runtime(tmp_path):
    with pytest.raises(ConfigError, match="runtime: expected no runtime for language provided"):
        load_function_config(folder(tmp_path, "name: fn\nlanguage: provided\nruntime: node\n"))


def test_unknown_language_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"language: expected one of: nodejs, python, provided "
                                          r"\(or image, with package: image\), got 'ruby'"):
        load_function_config(folder(tmp_path, "name: fn\nlanguage: ruby\nentrypoint: a.rb\n"))


def python_fn(tmp_path, runtime=None):
    text = "name: fn\nlanguage: python\nentrypoint: app.py\n"
    if runtime:
        text += f"runtime: '{runtime}'\n"
    return load_function_config(folder(tmp_path, text, ["app.py"]))


def test_python_defaults_to_the_base_interpreter_not_soras_virtualenv(tmp_path):
    runtime = runtime_for("python")
    runtime.prepare(python_fn(tmp_path))
    assert runtime.python == os.path.abspath(default_python())
    if sys.prefix != sys.base_prefix:
        assert not runtime.python.startswith(sys.prefix + os.sep)
    assert runtime.argv(python_fn(tmp_path))[0] == runtime.python


def test_python_runtime_by_name_skips_soras_virtualenv(tmp_path, monkeypatch):
    if sys.prefix == sys.base_prefix:
        pytest.skip("Sora is not running in a virtualenv")
    own_bin = os.path.join(sys.prefix, "bin")
    monkeypatch.setenv("PATH", own_bin + os.pathsep + os.environ["PATH"])
    runtime = runtime_for("python")
    runtime.prepare(python_fn(tmp_path, "python3"))
    assert not runtime.python.startswith(own_bin)


def test_python_runtime_by_relative_path(tmp_path):
    d = tmp_path / "fn" / ".venv" / "bin"
    d.mkdir(parents=True)
    (d / "python").symlink_to(default_python())
    runtime = runtime_for("python")
    runtime.prepare(python_fn(tmp_path, ".venv/bin/python"))
    assert runtime.python == str(d / "python")


def test_missing_interpreter_names_file_and_field(tmp_path):
    fn = python_fn(tmp_path, "python3.99")
    with pytest.raises(ConfigError) as exc:
        runtime_for("python").prepare(fn)
    assert f"{fn.source}: runtime: expected a Python 3.8 or newer interpreter" in str(exc.value)
    assert "'python3.99' (not found)" in str(exc.value)


def test_provided_executable_is_checked_at_start(tmp_path):
    fn = load_function_config(folder(tmp_path, "name: fn\nlanguage: provided\n"))
    runtime = runtime_for("provided")
    with pytest.raises(ConfigError, match="entrypoint: expected an executable file .* "
                                          r"\(not found\)"):
        runtime.prepare(fn)
    boot = tmp_path / "fn" / "bootstrap"
    boot.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not executable: chmod"):
        runtime.prepare(fn)
    boot.chmod(boot.stat().st_mode | stat.S_IXUSR)
    runtime.prepare(fn)
    env = runtime.environment(fn)
    assert env["_HANDLER"] == "handler" and env["LAMBDA_TASK_ROOT"] == str(tmp_path / "fn")


def test_every_runtime_gets_the_lambda_environment_and_nothing_else_of_the_host(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("SECRET_OF_THE_HOST", "x")
    fn = python_fn(tmp_path)
    for language in ("nodejs", "python", "provided"):
        env = runtime_for(language).environment(fn)
        assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn"
        assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
        assert "SECRET_OF_THE_HOST" not in env
