import textwrap

import pytest

from sora.config import (ConfigError, HttpTrigger, load_function_config, load_host_config,
                         settings_markdown)
from sora.isolation.uids import hashed_uid, sandbox_uid


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def make_fn(base, folder="fn", extra="", entry="index.js"):
    write(base / folder / "index.js", "exports.handler = async () => 1;")
    lines = [f"name: {folder}", "language: nodejs", f"entrypoint: {entry}", "handler: handler",
             "setup: [npm install]", "trigger: http", extra]
    path = base / folder / "sora.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path.parent


def test_valid_function_gets_defaults(tmp_path):
    fn = load_function_config(make_fn(tmp_path))
    assert fn.timeout == 30.0 and fn.memory == 256 and fn.env == {}
    assert fn.minInstances == 1 and fn.maxInstances >= 1 and fn.workers == 1
    assert fn.concurrency == fn.maxInstances and fn.idleTimeout == 300.0
    assert fn.setup == ["npm install"] and fn.trigger == (HttpTrigger(),) and fn.http


def test_unknown_field_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_function_config(make_fn(tmp_path, extra="timout: 3"))
    assert "sora.yaml: timout: unknown field; did you mean 'timeout'?" in str(exc.value)


def test_every_problem_names_file_field_and_expectation(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_function_config(make_fn(tmp_path, extra="timeout: -1\nmemory: lots\nenv: [1]"))
    text = str(exc.value)
    path = tmp_path / "fn" / "sora.yaml"
    assert f"{path}: timeout: expected a number of seconds greater than 0" in text
    assert f"{path}: memory: expected an integer from 64 to 10240, got 'lots'" in text
    assert f"{path}: env: expected a map of variable names to values" in text


def test_event_invoke_and_cold_start_settings(tmp_path):
    fn = load_function_config(make_fn(tmp_path, extra="instances: 3\ncoldStart: always"))
    assert fn.coldStart == "always"
    assert fn.eventInvoke.maxConcurrency == 3 and fn.eventInvoke.maximumRetryAttempts == 2
    with pytest.raises(ConfigError) as exc:
        load_function_config(make_fn(tmp_path, "bad", extra=(
            "coldStart: sometimes\neventInvoke: {maximumRetryAttempts: 11, retries: 1}")))
    text = str(exc.value)
    path = tmp_path / "bad" / "sora.yaml"
    assert f"{path}: coldStart: expected one of: never, always, always-setup" in text
    assert f"{path}: eventInvoke.maximumRetryAttempts: expected an integer from 0 to 10" in text
    assert f"{path}: eventInvoke.retries: unknown field" in text


def test_scaling_settings(tmp_path):
    fn = load_function_config(make_fn(tmp_path, extra=(
        "minInstances: 0\nmaxInstances: 16\nidleTimeout: 2.5\nworkers: 2")))
    assert (fn.minInstances, fn.maxInstances, fn.idleTimeout, fn.workers) == (0, 16, 2.5, 2)
    assert fn.concurrency == 32 and fn.eventInvoke.maxConcurrency == 32
    fixed = load_function_config(make_fn(tmp_path, "fixed", extra="instances: 4\n"
                                                                   "concurrency: 6"))
    assert (fixed.minInstances, fixed.maxInstances, fixed.concurrency) == (4, 4, 6)
    # maxConcurrency's one default: the function's concurrency, at most its own limit (1024)
    assert fixed.eventInvoke.maxConcurrency == 6
    wide = load_function_config(make_fn(tmp_path, "wide", extra="concurrency: 5000"))
    assert wide.eventInvoke.maxConcurrency == 1024
    from sora.config import EVENT_INVOKE_SETTINGS, EventInvokeConfig
    assert EventInvokeConfig().maxConcurrency is EVENT_INVOKE_SETTINGS["maxConcurrency"].default
    with pytest.raises(ConfigError) as exc:
        load_function_config(make_fn(tmp_path, "bad", extra=(
            "instances: 2\nmaxInstances: 3\nminInstances: -1\nconcurrency: 0")))
    text = str(exc.value)
    path = tmp_path / "bad" / "sora.yaml"
    assert f"{path}: minInstances: expected an integer from 0 to 256, got -1" in text
    assert f"{path}: concurrency: expected an integer from 1 to 100000, got 0" in text
    with pytest.raises(ConfigError, match="maxInstances: expected no maxInstances beside "
                                          "instances"):
        load_function_config(make_fn(tmp_path, "both", extra="instances: 2\nmaxInstances: 3"))
    with pytest.raises(ConfigError, match="concurrency: expected at least minInstances x "
                                          "workers \\(4\\), got 3"):
        load_function_config(make_fn(tmp_path, "low", extra="minInstances: 2\nworkers: 2\n"
                                                              "concurrency: 3"))
    with pytest.raises(ConfigError, match="maxInstances: expected at least minInstances \\(5\\)"):
        load_function_config(make_fn(tmp_path, "inv", extra="minInstances: 5\nmaxInstances: 3"))


def test_host_limits_must_hold_the_instances_kept_idle(tmp_path):
    make_fn(tmp_path, "a", extra="minInstances: 2\nworkers: 2\nmemory: 512")
    make_fn(tmp_path, "b", extra="minInstances: 0")
    ok = load_host_config(host(tmp_path, "functionPaths: [a, b]\nserver: {httpPort: 1}\n"
                               "limits: {maxInstances: 4, maxMemoryMB: 2048}\n"))
    assert ok.limits.maxInstances == 4 and ok.limits.maxMemoryMB == 2048
    with pytest.raises(ConfigError) as exc:
        load_host_config(host(tmp_path, "functionPaths: [a, b]\nserver: {httpPort: 1}\n"
                              "limits: {maxInstances: 3, maxMemoryMB: 2000}\n"))
    text = str(exc.value)
    assert "host-config.yaml: limits.maxInstances: expected at least 4" in text
    assert "host-config.yaml: limits.maxMemoryMB: expected at least 2048" in text


def test_missing_required_field(tmp_path):
    d = make_fn(tmp_path)
    (d / "sora.yaml").write_text("name: fn\nentrypoint: index.js\n")
    with pytest.raises(ConfigError, match="language: required field is missing"):
        load_function_config(d)


def test_missing_entrypoint_file(tmp_path):
    with pytest.raises(ConfigError, match="entrypoint: expected an existing file"):
        load_function_config(make_fn(tmp_path, entry="nope.js"))


def test_entrypoint_cannot_leave_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="not absolute, no '..'"):
        load_function_config(make_fn(tmp_path, entry="../index.js"))


@pytest.mark.parametrize("name", ["Hello", "-x", "a_b", "x" * 64, "a/b"])
def test_bad_names(tmp_path, name):
    d = make_fn(tmp_path)
    text = (d / "sora.yaml").read_text().replace("name: fn", f"name: '{name}'")
    (d / "sora.yaml").write_text(text)
    with pytest.raises(ConfigError, match="name: expected a name of lower-case letters"):
        load_function_config(d)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    d = make_fn(tmp_path)
    (d / "sora.yaml").write_text("name: fn\nlanguage: [nodejs\n")
    with pytest.raises(ConfigError, match=r"line 3, column 1: invalid YAML"):
        load_function_config(d)


def test_unsupported_trigger(tmp_path):
    with pytest.raises(ConfigError, match=r"trigger\[0\]: expected 'http', \{schedule"):
        load_function_config(_with(tmp_path, "trigger: http", "trigger: {cron: '* * * * *'}"))


def _with(tmp_path, old, new):
    d = make_fn(tmp_path)
    (d / "sora.yaml").write_text((d / "sora.yaml").read_text().replace(old, new))
    return d


def host(tmp_path, body):
    return write(tmp_path / "host-config.yaml", body)


def test_host_config_resolves_paths_and_skips_broken_functions(tmp_path):
    make_fn(tmp_path, "good")
    make_fn(tmp_path, "bad", extra="memory: 1")
    write(tmp_path / "certs" / "c.pem", "x")
    write(tmp_path / "certs" / "k.pem", "x")
    cfg = load_host_config(host(tmp_path, """\
        functionPaths: [./good/, ./bad/, ./absent/]
        server: {httpPort: 8080, httpsPort: 8443, sslCertPath: certs/c.pem,
                 sslKeyPath: certs/k.pem}
        """))
    assert [f.name for f in cfg.functions] == ["good"]
    assert {b.name for b in cfg.broken} == {"bad", "absent"}
    assert cfg.server.sslCertPath == str(tmp_path / "certs" / "c.pem")
    assert cfg.stateDir == str(tmp_path / ".sora")
    assert cfg.server.bind == "0.0.0.0" and cfg.server.maxBodyBytes == 6 * 1024 * 1024


def test_duplicate_names_are_an_error(tmp_path):
    make_fn(tmp_path, "one")
    d = make_fn(tmp_path, "two")
    (d / "sora.yaml").write_text((d / "sora.yaml").read_text().replace("name: two", "name: one"))
    cfg = load_host_config(host(tmp_path, "functionPaths: [one, two]\nserver: {httpPort: 1}\n"))
    assert [f.name for f in cfg.functions] == ["one"]
    assert "already used by" in cfg.broken[0].reason


def test_two_sandboxed_functions_never_share_a_uid(tmp_path, monkeypatch):
    # fn-49 and fn-191 hash to one uid (so did two of the examples); as root each sandbox
    # runs as its function's own uid.
    monkeypatch.setattr("os.geteuid", lambda: 0)
    for name in ("fn-49", "fn-191", "fn-7"):
        make_fn(tmp_path, name)
    assert hashed_uid("fn-49") == hashed_uid("fn-191")
    for paths in ("[fn-49, fn-191, fn-7]", "[fn-7, fn-191, fn-49]"):
        cfg = load_host_config(host(tmp_path, f"functionPaths: {paths}\n"
                                              "server: {httpPort: 1}\n"))
        uids = {fn.name: sandbox_uid(fn) for fn in cfg.functions}
        assert len(set(uids.values())) == 3 and not cfg.broken, uids
        # The first by name keeps its hashed uid, whatever the order of functionPaths.
        assert uids["fn-191"] == hashed_uid("fn-191") and uids["fn-7"] == hashed_uid("fn-7")
        assert uids["fn-49"] == hashed_uid("fn-49") + 1


def test_https_needs_cert_and_key(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_host_config(host(tmp_path, "functionPaths: [a]\nserver: {httpsPort: 8443}\n"))
    assert "server.sslCertPath: required when httpsPort is set" in str(exc.value)
    assert "server.sslKeyPath: required when httpsPort is set" in str(exc.value)


def test_a_listener_is_required(tmp_path):
    with pytest.raises(ConfigError, match="at least one of httpPort and httpsPort"):
        load_host_config(host(tmp_path, "functionPaths: [a]\nserver: {bind: 127.0.0.1}\n"))


def test_host_unknown_field(tmp_path):
    with pytest.raises(ConfigError, match="functionPath: unknown field; did you mean "
                                          "'functionPaths'"):
        load_host_config(host(tmp_path, "functionPath: [a]\nserver: {httpPort: 1}\n"))


def test_reference_docs_list_every_setting():
    text = settings_markdown()
    for field in ("functionPaths", "httpsPort", "sslKeyPath", "entrypoint", "instances",
                  "maxQueued", "setupTimeout", "minInstances", "maxInstances", "concurrency",
                  "idleTimeout", "workers", "maxMemoryMB", "prestartedRuntimes"):
        assert f"`{field}`" in text


def test_configuration_reference_is_up_to_date():
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert settings_markdown() in doc, "regenerate: python -m sora.config --markdown"


def test_state_dir_too_long_for_sockets(tmp_path):
    with pytest.raises(ConfigError, match="stateDir: expected a folder whose path is at most"):
        load_host_config(host(tmp_path, "functionPaths: [a]\nserver: {httpPort: 1}\n"
                              f"stateDir: /{'x' * 120}\n"))


def test_api_keys_are_read_hashed_and_checked(tmp_path, monkeypatch):
    make_fn(tmp_path, "a", extra="auth: none")
    write(tmp_path / "k.txt", "file-key-0123456789abcdef\n")
    monkeypatch.setenv("SORA_TEST_KEY", "env-key-0123456789abcdef")
    cfg = load_host_config(host(tmp_path, (
        "functionPaths: [a]\nserver: {httpPort: 1}\nauth:\n  apiKeys:\n"
        "    - {name: ops, key: inline-key-0123456789ab, scopes: [admin]}\n"
        "    - {name: ci, keyFile: k.txt, scopes: [invoke]}\n"
        "    - {name: one, keyEnv: SORA_TEST_KEY, scopes: ['invoke:a']}\n")))
    from sora.config import key_digest
    keys = {k.name: k for k in cfg.apiKeys}
    assert keys["ci"].digest == key_digest("file-key-0123456789abcdef")
    assert keys["one"].digest == key_digest("env-key-0123456789abcdef")
    assert "file-key" not in repr(cfg) and "inline-key" not in repr(cfg)
    assert keys["one"].allows("invoke", "a") and not keys["one"].allows("invoke", "b")
    assert not keys["ci"].allows("admin") and keys["ops"].allows("admin")
    assert cfg.function("a").auth == "none"


def test_api_key_errors_name_the_entry_and_field(tmp_path, monkeypatch):
    make_fn(tmp_path, "a")
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_host_config(host(tmp_path, (
            "functionPaths: [a]\nserver: {httpPort: 1}\nauth:\n  apiKeys:\n"
            "    - {name: a, key: short, scopes: [admin]}\n"
            "    - {name: b, keyFile: missing.txt, scopes: [invoke]}\n"
            "    - {name: c, keyEnv: NOT_SET_KEY, scopes: [invoke]}\n"
            "    - {name: d, key: long-enough-key-0123456789, scopes: [write]}\n"
            "    - {name: e, scopes: [admin]}\n")))
    text = str(exc.value)
    assert "auth.apiKeys[0].key: expected a key of at least 16 characters" in text
    assert "short" not in text
    assert "auth.apiKeys[1].keyFile: expected a readable file holding the key" in text
    assert "auth.apiKeys[2].keyEnv: expected the name of a set environment variable" in text
    assert "auth.apiKeys[3].scopes: expected a non-empty list of 'admin', 'metrics', 'invoke'" in text
    assert "auth.apiKeys[4]: expected exactly one of key, keyFile and keyEnv" in text


def test_secret_specs_are_validated_and_hold_no_values(tmp_path):
    fn = load_function_config(make_fn(tmp_path, extra=(
        "secrets:\n  A: {file: a.txt}\n  B: {env: B_VAR, asEnv: true}")))
    assert [(s.name, s.file, s.env, s.asEnv) for s in fn.secrets] == \
        [("A", "a.txt", None, False), ("B", None, "B_VAR", True)]
    for bad in ("secrets: {A: {file: a, env: b}}", "secrets: {A: x}", "secrets: {1A: {env: x}}",
                "secrets: {A: {env: x, asEnv: maybe}}"):
        with pytest.raises(ConfigError, match="sora.yaml: secrets: expected"):
            load_function_config(make_fn(tmp_path, "bad", extra=bad))


def test_a_sandboxed_function_folder_may_not_hold_sora_s_own_files(tmp_path):
    # Another function's folder, the host config or the state dir inside a function folder:
    # the sandbox would mount them for the function, so that function is broken, naming what.
    app = tmp_path / "app"
    write(app / "index.js", "exports.handler = async () => 1;")
    write(app / "sora.yaml", "name: here\nlanguage: nodejs\nentrypoint: index.js\n")
    make_fn(app / "fns", "apart")
    config = load_host_config(write(tmp_path / "host-config.yaml", """
        functionPaths: [app, app/fns/apart]
        server: {httpPort: 8080}
        """))
    [broken] = config.broken
    assert broken.name == "here" and "host-config.yaml: functionPaths (apart): expected a " \
        f"path outside the function folder {app}" in broken.reason
    assert [fn.name for fn in config.functions] == ["apart"]
    config = load_host_config(write(tmp_path / "host-config.yaml", """
        functionPaths: [app]
        server: {httpPort: 8080}
        stateDir: app/.sora
        """))
    [broken] = config.broken
    assert "host-config.yaml: stateDir: expected a path outside the function folder " \
        f"{app}" in broken.reason and not config.functions
    config = load_host_config(write(app / "host-config.yaml", """
        functionPaths: [.]
        server: {httpPort: 8080}
        stateDir: ../state
        """))
    assert "host config: expected a path outside" in config.broken[0].reason
    # With isolation: none it sees all of the host's files anyway: no check.
    write(app / "sora.yaml", "name: here\nlanguage: nodejs\nentrypoint: index.js\n"
                             "isolation: none\n")
    config = load_host_config(app / "host-config.yaml")
    assert [fn.name for fn in config.functions] == ["here"] and not config.broken


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 1), (3, 1), (8, 4), (None, 1)])
def test_gateway_workers_default_to_half_the_cores(tmp_path, monkeypatch, cores, expected):
    make_fn(tmp_path, "a")
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    cfg = load_host_config(host(tmp_path, "functionPaths: [a]\nserver: {httpPort: 1}\n"))
    assert cfg.server.gatewayWorkers == expected
    cfg = load_host_config(host(tmp_path, "functionPaths: [a]\n"
                                          "server: {httpPort: 1, gatewayWorkers: 3}\n"))
    assert cfg.server.gatewayWorkers == 3


def test_the_engine_socket_inside_a_function_folder_breaks_that_function(tmp_path):
    """Its container binds the folder: the engine's socket there would be the function's."""
    app = tmp_path / "app"
    write(app / "index.js", "exports.handler = async () => 1;")
    write(app / "sora.yaml", "name: here\nlanguage: nodejs\nentrypoint: index.js\n"
                             "isolation: container\nimage: sora-test/node20\n")
    config = load_host_config(write(tmp_path / "host-config.yaml", f"""
        functionPaths: [app]
        server: {{httpPort: 8080, docker: {{socket: {app}/docker.sock}}}}
        """))
    [broken] = config.broken
    assert "server.docker.socket: expected a path outside the function folder" in broken.reason
