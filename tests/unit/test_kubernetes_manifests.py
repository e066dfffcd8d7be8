"""deploy/kubernetes/, checked offline: each overlay rendered, every object validated against
the Kubernetes schemas, and the references between objects checked.

- **Rendering.** No maintained kustomize renderer installs from PyPI for Python 3.11 (the
  `kustomize` package is a 2024 partial port; `pykustomize` needs Python 3.14), and a fresh CI
  machine has no kubectl. So `render()` below builds an overlay with the few kustomize
  features the manifests use (resources, patches with strategic-merge files, namespace,
  images) and refuses any other field, and where kubectl is installed its own `kubectl
  kustomize` renders each overlay too and must give the same objects.
- **Schemas.** `kubernetes-validate` (the `test` extra) bundles the Kubernetes JSON schemas:
  every built-in object is validated in strict mode (unknown fields are errors) for
  KUBERNETES_VERSION. KEDA's ScaledObject and TriggerAuthentication are validated against
  their CRDs' OpenAPI schemas, vendored in deploy/kubernetes/crd-schemas/ (made strict the
  same way).
- **References.** Every Secret, ConfigMap, ServiceAccount and Service a workload, Service,
  Ingress or scaler names exists in the render or is one the operator creates
  (OPERATOR_SECRETS, each of which docs/deploy.md must say how to create); probe and
  Service ports name ports the containers declare; selectors select the pods they mean.
- **Host configs.** Each ConfigMap's host-config.yaml template, rendered as the entrypoint
  renders it, loads with sora.config as the pod would load it.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
KUBERNETES_VERSION = "1.32"
CRD_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-v1alpha1-scaledobject.json",
               ("keda.sh/v1alpha1", "TriggerAuthentication"):
                   "keda.sh-v1alpha1-triggerauthentication.json"}
# Made by the operator before `kubectl apply -k` (docs/deploy.md), per overlay.
OPERATOR_SECRETS = {"production": {"sora-store", "sora-tls", "sora-control-keys",
                                   "sora-worker-keys"},
                    "dev": {"sora-tls", "sora-control-keys", "sora-worker-keys"}}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "CustomResourceDefinition", "PriorityClass"}
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "namespace", "images"}
# Strategic merge: the key that identifies an item of these lists (Kubernetes' patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "ports": "containerPort", "volumeMounts": "mountPath",
              "imagePullSecrets": "name"}


# --- rendering -----------------------------------------------------------------------------

def _documents(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def _merge(target: dict, patch: dict) -> None:
    """A strategic merge patch as kustomize applies one (no $patch directives)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list) and \
                key in MERGE_KEYS:
            merge_key = MERGE_KEYS[key]
            for item in value:
                same = [t for t in target[key] if t.get(merge_key) == item.get(merge_key)]
                if same:
                    _merge(same[0], item)
                else:
                    target[key].append(copy.deepcopy(item))
        else:
            target[key] = copy.deepcopy(value)


def _containers(obj: dict) -> list[dict]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def render(folder: Path) -> list[dict]:
    """The objects `kubectl kustomize folder` makes, for the fields KUSTOMIZATION_FIELDS."""
    kustomization = _documents(folder / "kustomization.yaml")[0]
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{folder}/kustomization.yaml: fields this test cannot render: {unknown}"
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (folder / resource).resolve()
        objects += render(path) if path.is_dir() else _documents(path)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{folder}: only `patches: - path: FILE` is rendered here"
        for doc in _documents(folder / patch["path"]):
            targets = [o for o in objects if o["kind"] == doc["kind"] and
                       o["metadata"]["name"] == doc["metadata"]["name"]]
            assert len(targets) == 1, f"{folder}/{patch['path']}: no {doc['kind']} to patch"
            _merge(targets[0], {k: v for k, v in doc.items() if k != "metadata"})
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for image in kustomization.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = (image.get("newName", name) + ":" +
                                          image.get("newTag", tag or "latest")).rstrip(":")
    return objects


def _key(obj: dict) -> tuple:
    return obj["kind"], obj["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(KUBE / "overlays" / request.param)


# --- rendering and schemas -----------------------------------------------------------------

@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: the "
                    "overlays are rendered by this module's own renderer only")
def test_render_matches_kubectl_kustomize(overlay):
    name, objects = overlay
    done = subprocess.run(["kubectl", "kustomize", str(KUBE / "overlays" / name)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    theirs = {_key(o): o for o in yaml.safe_load_all(done.stdout) if o}
    ours = {_key(o): o for o in objects}
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{key} differs from kubectl kustomize's"


def _strict(schema):
    """A CRD schema that refuses unknown fields, as the API server prunes them (and as
    kubernetes-validate's strict schemas do for the built-in kinds)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and \
                not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


def _crd_validator(api_version: str, kind: str):
    with open(KUBE / "crd-schemas" / CRD_SCHEMAS[(api_version, kind)], encoding="utf-8") as fh:
        schema = json.load(fh)
    schema.pop("$comment", None)
    schema = _strict(schema)
    # The API server checks metadata itself; the CRD schema leaves it open.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def test_every_object_is_valid_for_its_schema(overlay):
    name, objects = overlay
    assert objects
    for obj in objects:
        crd = (obj["apiVersion"], obj["kind"])
        if crd in CRD_SCHEMAS:
            errors = sorted(_crd_validator(*crd).iter_errors(obj), key=str)
            assert not errors, f"{name}: {_key(obj)}: {errors[0].message} at " \
                               f"{list(errors[0].absolute_path)}"
        else:
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {_key(obj)}: {exc.message} at {list(exc.path)}")


def test_the_schema_check_refuses_a_wrong_field():
    """The check above can fail: an unknown field and a wrong type are refused."""
    deployment = next(o for o in render(KUBE / "base") if _key(o) == ("Deployment",
                                                                        "sora-control"))
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    scaled = next(o for o in render(KUBE / "overlays" / "production")
                  if o["kind"] == "ScaledObject")
    bad = copy.deepcopy(scaled)
    bad["spec"]["minReplicaCount"] = "two"
    assert list(_crd_validator(bad["apiVersion"], "ScaledObject").iter_errors(bad))
    bad = copy.deepcopy(scaled)
    bad["spec"]["scaleTarget"] = bad["spec"].pop("scaleTargetRef")
    assert list(_crd_validator(bad["apiVersion"], "ScaledObject").iter_errors(bad))


# --- references ----------------------------------------------------------------------------

def _named(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pods(objects) -> list[tuple[dict, dict]]:
    """(workload, its pod template) for every workload."""
    return [(o, o["spec"]["template"]) for o in objects if o["kind"] in WORKLOADS]


def test_workloads_reference_what_exists(overlay):
    name, objects = overlay
    secrets, configmaps = _named(objects, "Secret"), _named(objects, "ConfigMap")
    accounts = _named(objects, "ServiceAccount")
    operator = OPERATOR_SECRETS[name]

    def secret_key(secret: str, key: str | None, where: str) -> None:
        if secret in operator:
            return
        assert secret in secrets, f"{name}: {where} names Secret {secret}, which is neither " \
                                  "rendered nor one the operator makes"
        if key is not None:
            data = {**secrets[secret].get("data", {}), **secrets[secret].get("stringData", {})}
            assert key in data, f"{name}: {where}: Secret {secret} has no key {key}"

    for workload, template in _pods(objects):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        assert _selects(workload["spec"]["selector"]["matchLabels"],
                        template["metadata"]["labels"]), f"{where}: selector"
        spec = template["spec"]
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts, f"{where}: service account"
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret_key(volume["secret"]["secretName"], None, where)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, f"{where}: {volume}"
        mounts = {v["name"] for v in spec.get("volumes", [])} | \
            {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secret_key(ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"], where)
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in configmaps, f"{where}: {env}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in mounts, f"{where}: volume {mount['name']} not declared"
            ports = container.get("ports", [])
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                check = container.get(probe)
                if container["name"] == "sora":   # Sora's own; the dev PostgreSQL has two
                    assert check, f"{where}: container {container['name']} has no {probe}"
                if check is None:
                    continue
                port = (check.get("httpGet") or check.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    assert port in {p.get("name") for p in ports}, f"{where}: {probe} port"
                elif port is not None:
                    assert port in {p["containerPort"] for p in ports}, f"{where}: {probe}"
            assert container["resources"]["requests"] and container["resources"]["limits"], \
                f"{where}: requests and limits"


def test_services_ingress_budgets_and_scalers_select_what_exists(overlay):
    name, objects = overlay
    pods = _pods(objects)
    services = _named(objects, "Service")
    for service_name, service in services.items():
        selected = [(w, t) for w, t in pods
                    if _selects(service["spec"]["selector"], t["metadata"]["labels"])]
        assert selected, f"{name}: Service {service_name} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload, template in selected:
                declared = [p for c in template["spec"]["containers"]
                            for p in c.get("ports", [])]
                assert any(p.get("name") == target or p["containerPort"] == target
                           for p in declared), \
                    f"{name}: Service {service_name} port {target} is not a port of " \
                    f"{workload['metadata']['name']}"
    for ingress in _named(objects, "Ingress").values():
        for tls in ingress["spec"].get("tls", []):
            assert tls["secretName"] in _named(objects, "Secret") or \
                tls["secretName"] in OPERATOR_SECRETS[name]
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in services, f"{name}: Ingress backend {backend}"
                assert backend["port"]["name"] in \
                    {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
    budgets = _named(objects, "PodDisruptionBudget")
    assert budgets, f"{name}: no PodDisruptionBudget"
    for budget_name, budget in budgets.items():
        assert any(_selects(budget["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
                   for _, t in pods), f"{name}: PDB {budget_name} selects nothing"
    for workload, _ in pods:
        if workload["kind"] == "Deployment":
            assert any(_selects(b["spec"]["selector"]["matchLabels"],
                                workload["spec"]["template"]["metadata"]["labels"])
                       for b in budgets.values()), \
                f"{name}: no PDB for {workload['metadata']['name']}"
    for policy_name, policy in _named(objects, "NetworkPolicy").items():
        selectors = [policy["spec"]["podSelector"]["matchLabels"]] + \
            [peer["podSelector"]["matchLabels"] for rule in policy["spec"].get("ingress", [])
             for peer in rule.get("from", []) if "podSelector" in peer]
        for selector in selectors:
            assert any(_selects(selector, t["metadata"]["labels"]) for _, t in pods), \
                f"{name}: NetworkPolicy {policy_name} selects no pod with {selector}"
        target = [t for _, t in pods
                  if _selects(policy["spec"]["podSelector"]["matchLabels"],
                              t["metadata"]["labels"])]
        declared = {p.get("name") for t in target for c in t["spec"]["containers"]
                    for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert port["port"] in declared, f"{name}: {policy_name}: port {port}"
    deployments = _named(objects, "Deployment")
    auths = _named(objects, "TriggerAuthentication")
    for scaled in _named(objects, "ScaledObject").values():
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] in auths
    for auth in auths.values():
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["name"] in _named(objects, "Secret") or \
                ref["name"] in OPERATOR_SECRETS[name]


def test_production_scales_workers_on_the_queue(overlay):
    name, objects = overlay
    if name != "production":
        return
    scaled = _named(objects, "ScaledObject")["sora-worker"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert "FROM events WHERE state = 'queued'" in trigger["metadata"]["query"]
    assert _named(objects, "Deployment")["sora-control"]["spec"]["replicas"] == 2


def test_the_operators_secrets_are_documented():
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for secret in set().union(*OPERATOR_SECRETS.values()):
        assert f"secret generic {secret}" in guide or f"secret tls {secret}" in guide, \
            f"docs/deploy.md does not say how to create the Secret {secret}"


# --- the host configs ----------------------------------------------------------------------

sys.path.insert(0, str(ROOT / "deploy" / "container"))
import entrypoint  # noqa: E402  (deploy/container/entrypoint.py: the container's own code)


def _pod_config(configmap: dict, tmp: Path, env: dict) -> Path:
    """The ConfigMap's template as the entrypoint renders it in a pod, its absolute paths moved
    under `tmp` (where the test made what the pod would have there)."""
    text = entrypoint.render(configmap["data"]["host-config.yaml"], env, "configmap")
    for path in ("/srv/sora/functions", "/run/secrets/sora/tls", "/var/lib/sora"):
        text = text.replace(path, str(tmp) + path)
    config = tmp / "host-config.yaml"
    config.write_text(text)
    return config


def test_the_host_config_templates_load(tmp_path, monkeypatch):
    from sora.cluster.keys import add_allowed, init_keys
    from sora.config import load_host_config

    objects = render(KUBE / "base")
    functions = tmp_path / "srv/sora/functions"
    shutil.copytree(ROOT / "examples" / "hello", functions / "hello")
    tls = tmp_path / "run/secrets/sora/tls"
    tls.mkdir(parents=True)
    (tls / "tls.crt").write_text("not parsed at load")
    (tls / "tls.key").write_text("not parsed at load")
    # What the entrypoint makes from each keys Secret: the main hosts allow the workers' key,
    # the workers allow the main hosts' as control.key.
    control, worker = tmp_path / "control-keys", tmp_path / "worker-keys"
    init_keys(str(control))
    init_keys(str(worker))
    add_allowed(str(control), str(worker / "host.key"), name="worker")
    add_allowed(str(worker), str(control / "host.key"), name="control")
    monkeypatch.setenv("SORA_STORE_URL", "postgresql://sora:secret@db.invalid:5432/sora")
    env = {"POD_IP": "10.1.2.3", "POD_NAME": "sora-worker-5d8f9c7b6-x2x9k"}
    configs = _named(objects, "ConfigMap")
    for name, keys in (("sora-control-config", control), ("sora-worker-config", worker)):
        keys_dir = tmp_path / "var/lib/sora/keys"
        if keys_dir.exists():
            shutil.rmtree(keys_dir)
        shutil.copytree(keys, keys_dir)
        os.chmod(keys_dir, 0o700)
        config = load_host_config(str(_pod_config(configs[name], tmp_path, env)))
        assert [fn.name for fn in config.functions] == ["hello"], config.broken
        assert config.store.kind == "postgresql"
        assert "secret" not in config.store.display_url
        if name == "sora-worker-config":
            assert config.cluster.advertise == "10.1.2.3"
            assert config.cluster.controlPlane == "tcp://sora-cluster:7100"
        else:
            assert config.cluster.listen == "tcp://0.0.0.0:7100"
            assert config.server.httpPort == 8080
        assert config.cluster.name == env["POD_NAME"]


# --- the attacker's view: what a function in a pod could reach -----------------------------

# What every sandbox binds (read-only) from the image: the system (sora.isolation.sandbox's
# SYSTEM_DIRS), Sora's virtualenv and the base image's Python and Node.js installations
# (/opt/sora, /usr/local), and the functions' folders.
SANDBOX_BINDS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt/sora",
                 "/usr/local", "/srv/sora/functions")


def test_sandbox_binds_cover_the_sandboxs_system_dirs():
    from sora.isolation.sandbox import SYSTEM_DIRS
    assert set(SYSTEM_DIRS) <= set(SANDBOX_BINDS)


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def test_no_secret_is_mounted_where_a_sandbox_binds(overlay):
    """A Secret mounted under /etc (say) would be in every function's sandbox, readable as soon
    as a mode or an fsGroup let the function's uid read it; under /run/secrets it is in none."""
    name, objects = overlay
    for workload, template in _pods(objects):
        secret_volumes = {v["name"] for v in template["spec"].get("volumes", [])
                          if "secret" in v}
        for container in template["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secret_volumes and container["name"] == "sora":
                    assert not _under(mount["mountPath"], SANDBOX_BINDS), \
                        f"{name}: {workload['metadata']['name']} mounts Secret volume " \
                        f"{mount['name']} at {mount['mountPath']}, inside what sandboxes bind"


def test_the_store_url_reaches_sora_only_from_a_secret(overlay):
    """The URL (with its password) is never in a ConfigMap, a plain env value or the rendered
    config file: Sora reads it from the variable `store.urlEnv` names, set from a Secret."""
    name, objects = overlay
    for configmap in _named(objects, "ConfigMap").values():
        text = configmap["data"]["host-config.yaml"]
        store = yaml.safe_load(text).get("store", {})
        assert "url" not in store and store.get("urlEnv") == "SORA_STORE_URL"
        assert "postgresql://" not in text
    for workload, template in _pods(objects):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"] == "SORA_STORE_URL":
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"]
    for scaled in _named(objects, "ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert not {"connection", "password", "connectionFromEnv"} & \
                set(trigger["metadata"]), "the scaler's connection belongs in a Secret"
