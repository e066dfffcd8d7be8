"""Lambda's handler string in sora.yaml: `handler: index.handler` names the file, as on Lambda."""
from __future__ import annotations

import pytest

from sora.config import ConfigError, lambda_handler, load_function_config


def folder(tmp_path, spec: str, files: list[str]):
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (tmp_path / "sora.yaml").write_text("name: fn\n" + spec)
    return tmp_path


@pytest.mark.parametrize("language, handler, files, entrypoint, export", [
    ("nodejs", "index.handler", ["index.mjs"], "index.mjs", "handler"),
    ("nodejs", "index.handler", ["index.cjs"], "index.cjs", "handler"),
    # Lambda's order: .js before .mjs before .cjs
    ("nodejs", "index.handler", ["index.cjs", "index.mjs", "index.js"], "index.js", "handler"),
    ("nodejs", "index.handler", ["index.cjs", "index.mjs"], "index.mjs", "handler"),
    ("nodejs", "src/app.handler", ["src/app.js"], "src/app.js", "handler"),
    ("nodejs", "lib/v1.2/app.api.get", ["lib/v1.2/app.mjs"], "lib/v1.2/app.mjs", "api.get"),
    ("python", "app.lambda_handler", ["app.py"], "app.py", "lambda_handler"),
    ("python", "src/app.handler", ["src/app.py"], "src/app.py", "handler"),
    ("python", "pkg.app.handler", ["pkg/app.py"], "pkg/app.py", "handler"),
])
def test_lambda_handler_string_names_the_file(tmp_path, language, handler, files, entrypoint,
                                              export):
    fn = load_function_config(folder(tmp_path, f"language: {language}\nhandler: {handler}\n",
                                     files))
    assert (fn.entrypoint, fn.handler) == (entrypoint, export)


def test_entrypoint_with_lambda_handler_string_means_its_export(tmp_path):
    """The issue's case: `entrypoint: index.mjs` with `handler: index.handler` failed with
    `index.mjs.index.handler is undefined`."""
    fn = load_function_config(folder(tmp_path, "language: nodejs\nentrypoint: index.mjs\n"
                                               "handler: index.handler\n", ["index.mjs"]))
    assert (fn.entrypoint, fn.handler) == ("index.mjs", "handler")
    # A bare name, or a nested export of another name, is as before.
    fn = load_function_config(folder(tmp_path, "language: nodejs\nentrypoint: index.mjs\n"
                                               "handler: api.get\n", ["index.mjs"]))
    assert (fn.entrypoint, fn.handler) == ("index.mjs", "api.get")


@pytest.mark.parametrize("language, handler, expected", [
    ("nodejs", "index.handler", "handler: expected the file index.js, index.mjs or "
                                "index.cjs in"),
    ("python", "app.lambda_handler", "handler: expected the file app.py in"),
    ("nodejs", "../outside/index.handler", "handler: expected a path inside the function "
                                           "folder (not absolute, no '..')"),
    ("nodejs", "handler", "entrypoint: required field is missing for language nodejs (a .js, "
                          ".cjs, .mjs file), unless handler names the file as Lambda's handler "
                          "string does, such as 'index.handler'"),
    ("python", "my-app.handler", "entrypoint: required field is missing for language python"),
])
def test_bad_handler_strings_name_file_field_and_expected(tmp_path, language, handler,
                                                         expected):
    d = folder(tmp_path, f"language: {language}\nhandler: {handler}\n", [])
    with pytest.raises(ConfigError) as exc:
        load_function_config(d)
    assert f"{d / 'sora.yaml'}: {expected}" in str(exc.value)


def test_handler_string_split_is_lambdas():
    assert lambda_handler("nodejs", "index.handler") == ("index", "handler")
    assert lambda_handler("nodejs", "/abs/index.handler") is None
    assert lambda_handler("nodejs", "handler") is None
    assert lambda_handler("python", "src.app.handler") == ("src/app", "handler")
    assert lambda_handler("python", "app.") is None
    assert lambda_handler("provided", "function.handler") is None
