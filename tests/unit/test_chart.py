"""The Helm chart (charts/tao-operator): values against their schema, the CRD copy against the generated CRD,
the RBAC rules against the API calls the operator was seen to make, and `helm template` where helm exists.

Most checks need no template engine and read the chart's files directly. That is why the RBAC rules live in
files/rbac-rules.yaml (rbac.yaml includes it verbatim with `.Files.Get`) and the CRD in files/taojob.yaml
(crd.yaml includes it): Python reads exactly what the chart grants and installs. The `helm template` tests
need a helm binary on PATH: `.ci/install-helm` puts one into .venv/bin (CI runs it), else they skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tao_operator import cluster
from tao_operator.builders import UID as STAGE_UID
from tao_operator.builders import OperatorDefaults
from tao_operator.crd import CRD_NAME, render_crd, render_crd_yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tao-operator"
TEMPLATES = CHART / "templates"
CRD_COPY = CHART / "files" / "taojob.yaml"
RBAC_RULES = CHART / "files" / "rbac-rules.yaml"
API_CALLS = ROOT / "tests" / "operator" / "api_calls.json"
K8S_VERSION = "1.27.0"  # Chart.yaml's kubeVersion floor

# Granted beyond the recorded calls, each for a reason the operator tests cannot observe (see rbac-rules.yaml).
EXTRA_GRANTS = {
    # OwnerReferencesPermissionEnforcement: setting blockOwnerDeletion on a child's ownerReference to a TAOJob
    # needs `update` on taojobs/finalizers (OpenShift enables the plugin); the emulator does not enforce it.
    ("update", "tao.dev", "taojobs/finalizers"),
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}

Values = dict[str, Any]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def values() -> Values:
    data: Values = load_yaml(CHART / "values.yaml")
    return data


def schema() -> Values:
    data: Values = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    return data


def schema_errors(doc: Values) -> list[str]:
    return [
        f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema()).iter_errors(doc)
    ]


def merged(base: Values, over: Values) -> Values:
    """Helm's coalescing of user values over the chart's (maps merged, everything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


# --------------------------------------------------------------------------------------------- Chart.yaml, files


def test_chart_yaml_fields() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "tao-operator" == CHART.name
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.27.0-0"
    assert chart["type"] == "application"
    # The default images are tagged with appVersion: it must be the version the project builds.
    project = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{chart["appVersion"]}"' in project


def chart_yaml_files() -> list[Any]:
    paths = sorted(
        p for p in CHART.rglob("*") if p.suffix in (".yaml", ".yml") and TEMPLATES not in p.parents
    )
    return [pytest.param(p, id=str(p.relative_to(CHART))) for p in paths]


@pytest.mark.parametrize("path", chart_yaml_files())
def test_non_template_yaml_parses(path: Path) -> None:
    with path.open(encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert docs, f"{path} holds no YAML document"


def test_chart_has_the_expected_templates() -> None:
    names = {p.name for p in TEMPLATES.iterdir()}
    assert names >= {
        "_helpers.tpl",
        "deployment.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "crd.yaml",
        "service.yaml",
        "servicemonitor.yaml",
        "NOTES.txt",
        "user-roles.yaml",
    }
    # Helm neither templates nor upgrades a chart's crds/ directory: the CRD must come from crd.yaml only.
    assert not (CHART / "crds").exists()


# --------------------------------------------------------------------------------------------- values and schema


def test_schema_is_draft07_and_closed_at_every_defined_level() -> None:
    doc = schema()
    assert doc["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(doc)

    def walk(node: Values, path: str) -> list[str]:
        problems = []
        if "properties" in node and node.get("additionalProperties") is not False:
            problems.append(f"{path}: an object with properties must set additionalProperties: false")
        for name, sub in node.get("properties", {}).items():
            problems += walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            problems += walk(node["items"], f"{path}[]")
        return problems

    assert not walk(doc, "$")


def test_values_validate_against_schema() -> None:
    assert not schema_errors(values())


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"bogus": 1}, id="unknown-top-level-key"),
        pytest.param({"images": {"trainer": {"registry": "x"}}}, id="unknown-nested-key"),
        pytest.param({"metrics": {"serviceMonitor": {"intervall": "1m"}}}, id="typo-deep-down"),
        pytest.param({"replicaCount": "1"}, id="replicaCount-as-string"),
        pytest.param({"replicaCount": 2}, id="two-replicas-of-a-single-active-operator"),
        pytest.param({"images": {"serving": {"pullPolicy": "Sometimes"}}}, id="bad-pullPolicy"),
        pytest.param({"images": {"operator": {"tag": "v1 beta"}}}, id="bad-tag"),
        pytest.param({"watchNamespaces": ["Team_A"]}, id="bad-namespace-name"),
        pytest.param({"watchNamespaces": "team-a"}, id="namespaces-not-a-list"),
        pytest.param({"crds": {"install": "yes"}}, id="install-not-a-boolean"),
        pytest.param({"operator": {"backoffLimit": -1}}, id="negative-backoffLimit"),
        pytest.param({"operator": {"ttlSecondsAfterFinished": "1h"}}, id="ttl-not-an-integer"),
        pytest.param({"metrics": {"port": 70000}}, id="port-out-of-range"),
        pytest.param({"metrics": {"serviceMonitor": {"interval": "often"}}}, id="bad-duration"),
        pytest.param({"imagePullSecrets": [{"name": "a", "key": "b"}]}, id="bad-pull-secret"),
        pytest.param({"operator": {"sizeLimits": {"tmp": "lots"}}}, id="bad-size-limit"),
        pytest.param({"operator": {"sizeLimits": {"disk": "1Gi"}}}, id="unknown-size-limit"),
        pytest.param({"operator": {"allowList": {"imagePrefixes": ["a/,b/"]}}}, id="comma-in-image-prefix"),
        pytest.param({"operator": {"allowList": {"serviceAccounts": ["Admin"]}}}, id="bad-service-account"),
    ],
)
def test_schema_rejects_a_bad_value(override: Values) -> None:
    assert schema_errors(merged(values(), override))


@pytest.mark.parametrize(
    "override",
    [
        pytest.param({"watchNamespaces": ["team-a", "team-b"]}, id="namespaced"),
        pytest.param(
            {"operator": {"ttlSecondsAfterFinished": 0, "extraEnv": [{"name": "A", "value": "b"}]}},
            id="ttl-and-env",
        ),
        pytest.param(
            {"images": {"trainer": {"tag": "0.2.0-rc.1"}, "operator": {"pullPolicy": "Always"}}}, id="images"
        ),
        pytest.param(
            {"serviceAccount": {"create": False, "name": "existing-sa"}, "rbac": {"create": False}},
            id="bring-your-own-sa",
        ),
        pytest.param(
            {"replicaCount": 0, "crds": {"install": False}, "metrics": {"enabled": False}}, id="off"
        ),
        pytest.param(
            {
                "metrics": {
                    "serviceMonitor": {"enabled": True, "interval": "1m30s", "labels": {"release": "prom"}}
                }
            },
            id="servicemonitor",
        ),
        pytest.param(
            {
                "operator": {
                    "sizeLimits": {"tmp": "500Gi", "models": "1Ti", "shm": "512Mi"},
                    "allowList": {
                        "imagePrefixes": ["registry.example.com/ml/"],
                        "serviceAccounts": ["tao-runner"],
                    },
                }
            },
            id="size-limits-and-allow-list",
        ),
    ],
)
def test_schema_accepts_a_good_override(override: Values) -> None:
    assert not schema_errors(merged(values(), override))


KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")


def test_every_value_has_a_comment_above_it() -> None:
    """cert-manager style: every key the schema defines is documented on the line(s) right above it.

    Inside free-form values (Kubernetes types such as securityContext or resources) the block's own comment
    covers its fields.
    """
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing keys
    missing, seen = [], 0
    for number, line in enumerate(lines, 1):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [match["key"]]
        stack.append((indent, match["key"]))
        parent = schema()
        for key in path[:-1]:
            parent = parent.get("properties", {}).get(key, {})
        if "properties" not in parent:
            continue  # a field of a free-form value
        assert path[-1] in parent["properties"], (
            f"values.yaml:{number}: {'.'.join(path)} is not in the schema"
        )
        seen += 1
        above = lines[number - 2].strip() if number > 1 else ""
        if not above.startswith("#"):
            missing.append(f"values.yaml:{number}: {'.'.join(path)}")
    assert not missing, "values without a comment right above them:\n" + "\n".join(missing)
    assert seen >= 40


def test_every_schema_property_is_in_values_yaml() -> None:
    """A value the schema allows but values.yaml lacks would be undocumented."""

    def walk(node: Values, value: Any, path: str) -> list[str]:
        out = []
        for name, sub in node.get("properties", {}).items():
            if not isinstance(value, dict) or name not in value:
                out.append(f"{path}.{name}")
            else:
                out += walk(sub, value[name], f"{path}.{name}")
        return out

    assert not walk(schema(), values(), "$")


def test_default_pod_security_is_hardened() -> None:
    v = values()
    pod, container = v["podSecurityContext"], v["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["runAsNonRoot"] is True and container["runAsUser"] == 65532
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert v["replicaCount"] == 1


def test_dockerfile_users_match_the_pods_that_run_them() -> None:
    operator = (ROOT / "operator" / "Dockerfile").read_text(encoding="utf-8")
    trainer = (ROOT / "trainer_image" / "Dockerfile").read_text(encoding="utf-8")
    # runAsNonRoot needs a numeric USER; the chart runs the operator as 65532, the builders stage pods as UID.
    assert re.search(r"^USER 65532(:65532)?$", operator, re.M)
    assert re.search(rf"^USER {STAGE_UID}(:{STAGE_UID})?$", trainer, re.M)
    assert re.search(r'^ENTRYPOINT \["tao", "operator"\]$', operator, re.M)
    assert re.search(r'^ENTRYPOINT \["tao-stage"\]$', trainer, re.M)
    assert re.search(r"\[operator\]", operator) and not re.search(r"torch|\[train", operator)


def test_default_images_are_the_operators_defaults() -> None:
    """Without the chart the operator falls back to OperatorDefaults: both must name the same images."""
    v, app = values()["images"], load_yaml(CHART / "Chart.yaml")["appVersion"]

    def ref(image: Values) -> str:
        return f"{image['repository']}:{image['tag'] or app}"

    defaults = OperatorDefaults()
    assert ref(v["trainer"]) == defaults.trainer_image
    assert ref(v["serving"]) == defaults.serving_image
    assert v["trainer"]["pullPolicy"] == defaults.image_pull_policy
    assert values()["operator"]["backoffLimit"] == defaults.backoff_limit
    assert values()["operator"]["ttlSecondsAfterFinished"] == defaults.ttl_seconds_after_finished
    limits = values()["operator"]["sizeLimits"]
    assert (limits["tmp"], limits["models"], limits["shm"]) == (
        defaults.tmp_size_limit,
        defaults.models_size_limit,
        defaults.shm_size_limit,
    )
    allow = values()["operator"]["allowList"]
    assert tuple(allow["imagePrefixes"]) == defaults.allowed_image_prefixes == ()
    assert tuple(allow["serviceAccounts"]) == defaults.allowed_service_accounts == ()


def test_the_chart_sets_every_operator_setting_and_only_ones_the_operator_reads() -> None:
    """`tao operator` reads TAO_<FIELD> for each OperatorDefaults field; every TAO_* the chart sets must be read."""
    template = (TEMPLATES / "deployment.yaml").read_text(encoding="utf-8")
    chart_env = set(re.findall(r"- name: (TAO_[A-Z0-9_]+)", template))
    fields = {f"TAO_{name.upper()}" for name in OperatorDefaults.model_fields}
    assert fields <= chart_env, f"operator settings the chart never sets: {sorted(fields - chart_env)}"
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "operator" / "tao_operator").glob("*.py")
    )
    unread = {name for name in chart_env - fields if name not in source}
    assert not unread, f"the chart sets {sorted(unread)} but the operator never reads them"


# --------------------------------------------------------------------------------------------- CRD


def test_chart_crd_copy_matches_the_generated_crd() -> None:
    assert CRD_COPY.read_text(encoding="utf-8") == render_crd_yaml(), (
        "charts/tao-operator/files/taojob.yaml is out of date: "
        "run `tao crd --output charts/tao-operator/files/taojob.yaml`"
    )


def crd_as_the_template_renders_it() -> str:
    """What templates/crd.yaml does to files/taojob.yaml, replayed (test_crd_template_does_what_is_replayed
    pins the template to these two operations): drop the header before `---`, insert metadata."""
    text = CRD_COPY.read_text(encoding="utf-8")
    body = text.split("\n---\n")[-1]
    meta = "metadata:\n  labels:\n    app.kubernetes.io/name: tao-operator\n  annotations:\n    helm.sh/resource-policy: keep\n"
    out, count = re.subn(r"(?m)^metadata:\n", meta, body)
    assert count == 1, (
        f"files/taojob.yaml has {count} top-level `metadata:` lines; crd.yaml needs exactly one"
    )
    return out


def test_crd_template_does_what_is_replayed() -> None:
    template = (TEMPLATES / "crd.yaml").read_text(encoding="utf-8")
    assert "{{- if .Values.crds.install }}" in template
    assert '{{- $crd := last (splitList "\\n---\\n" (.Files.Get "files/taojob.yaml")) }}' in template
    assert '{{ regexReplaceAll "(?m)^metadata:\\n" $crd $meta }}' in template
    assert "{{- if .Values.crds.keep }}" in template and "helm.sh/resource-policy: keep" in template


def test_crd_as_installed_is_the_generated_crd_plus_keep() -> None:
    docs = [d for d in yaml.safe_load_all(crd_as_the_template_renders_it()) if d is not None]
    assert len(docs) == 1
    (crd,) = docs
    assert crd["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"].pop("labels")
    assert crd == render_crd()
    assert crd["metadata"]["name"] == CRD_NAME
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------------------------- RBAC


def rbac_rules() -> list[Values]:
    rules: list[Values] = load_yaml(RBAC_RULES)
    return rules


def granted() -> list[tuple[str, str, str]]:
    """(verb, apiGroup, resource) for every grant in files/rbac-rules.yaml, duplicates kept."""
    return [
        (verb, group, resource)
        for rule in rbac_rules()
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def recorded() -> set[tuple[str, str, str]]:
    if not API_CALLS.exists():
        pytest.fail(
            f"{API_CALLS.relative_to(ROOT)} is missing: record it with TAO_RECORD_API=1 pytest tests/operator"
        )
    calls = {(str(v), str(g), str(r)) for v, g, r in json.loads(API_CALLS.read_text(encoding="utf-8"))}
    assert calls, "no API calls recorded"
    return calls


def test_rbac_rules_have_no_wildcards_and_only_known_fields() -> None:
    for rule in rbac_rules():
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        for field in ("apiGroups", "resources", "verbs"):
            assert rule[field] and all(isinstance(x, str) and "*" not in x for x in rule[field]), rule
        assert set(rule["verbs"]) <= VERBS, rule
        kubernetes_validate.validate(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "x"},
                "rules": [rule],
            },
            K8S_VERSION,
            strict=True,
        )


def test_rbac_grants_each_permission_once() -> None:
    grants = granted()
    assert len(grants) == len(set(grants)), sorted(g for g in grants if grants.count(g) > 1)


def test_rbac_rules_equal_the_recorded_operator_calls() -> None:
    """Verb by verb, resource by resource: nothing the operator calls is missing, nothing else is granted."""
    grants, calls = set(granted()), recorded() | EXTRA_GRANTS
    assert not calls - grants, (
        f"the operator calls these, the chart does not grant them: {sorted(calls - grants)}"
    )
    assert not grants - calls, (
        f"the chart grants these, the operator never calls them: {sorted(grants - calls)}"
    )


def test_rbac_covers_every_resource_the_operator_client_names() -> None:
    """cluster.RESOURCES lists what the operator's own client can touch; each must be granted something."""
    prefixes = {"/api/v1": ""}
    resources = {
        (prefixes.get(prefix, prefix.split("/")[2]), plural) for prefix, plural in cluster.RESOURCES.values()
    }
    granted_resources = {(group, resource) for _, group, resource in granted()}
    assert resources <= granted_resources, sorted(resources - granted_resources)


def test_rbac_template_includes_the_rules_file_in_both_modes() -> None:
    template = (TEMPLATES / "rbac.yaml").read_text(encoding="utf-8")
    assert '{{- $rules := .Files.Get "files/rbac-rules.yaml" }}' in template
    # Once in the ClusterRole (all namespaces), once in the Role of each watched namespace; nothing else.
    assert template.count("rules:\n{{ $rules }}\n") == 2
    assert template.count("rules:") == 2
    for kind in ("kind: ClusterRole\n", "kind: ClusterRoleBinding\n", "kind: Role\n", "kind: RoleBinding\n"):
        assert kind in template
    assert "{{- range .Values.watchNamespaces }}" in template


# --------------------------------------------------------------------------------------------- helm template


HELM_CASES = [
    pytest.param({}, id="default"),
    pytest.param({"watchNamespaces": ["team-a", "team-b"]}, id="watchNamespaces"),
]


@pytest.fixture(scope="module")
def helm() -> str:
    path = shutil.which("helm")
    if path is None:
        pytest.skip(
            "helm is not on PATH (install it with .ci/install-helm): `helm template` / `helm lint` of the "
            "chart not run (values, CRD copy and RBAC rules are still checked from the chart's files)"
        )
    return path


def helm_template(helm: str, override: Values, tmp_path: Path) -> list[Values]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(override), encoding="utf-8")
    lint = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(values_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(
        [
            helm,
            "template",
            "tao",
            str(CHART),
            "--namespace",
            "tao-system",
            "-f",
            str(values_file),
            "--kube-version",
            K8S_VERSION,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


@pytest.mark.parametrize("override", HELM_CASES)
def test_helm_template_renders_valid_manifests(helm: str, override: Values, tmp_path: Path) -> None:
    docs = helm_template(helm, override, tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    by_kind: dict[str, list[Values]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)

    (crd,) = by_kind["CustomResourceDefinition"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert {k: v for k, v in crd.items() if k != "metadata"} == {
        k: v for k, v in render_crd().items() if k != "metadata"
    }

    (deployment,) = by_kind["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["tao", "operator"]
    namespaces = override.get("watchNamespaces", [])
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in namespaces
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TAO_TRAINER_IMAGE"] == OperatorDefaults().trainer_image
    assert env["TAO_METRICS_PORT"] == "9090"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"healthz": 8080, "metrics": 9090}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    # The aggregated TAOJob user roles are not the operator's (test_taojob_user_roles_are_aggregated).
    by_kind["ClusterRole"] = [
        r
        for r in by_kind.get("ClusterRole", [])
        if not r["metadata"]["name"].endswith(("-taojob-edit", "-taojob-view"))
    ]
    if not by_kind["ClusterRole"]:
        del by_kind["ClusterRole"]
    if namespaces:
        assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
        roles = by_kind["Role"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
        assert sorted(b["metadata"]["namespace"] for b in by_kind["RoleBinding"]) == sorted(namespaces)
    else:
        assert "Role" not in by_kind
        roles = by_kind["ClusterRole"]
        assert len(by_kind["ClusterRoleBinding"]) == 1
    for role in roles:
        assert role["rules"] == rbac_rules()


def kinds(docs: list[Values]) -> dict[str, list[Values]]:
    by_kind: dict[str, list[Values]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def test_helm_template_has_no_service_monitor_by_default(helm: str, tmp_path: Path) -> None:
    assert values()["metrics"]["serviceMonitor"]["enabled"] is False
    by_kind = kinds(helm_template(helm, {}, tmp_path))
    assert "ServiceMonitor" not in by_kind
    assert len(by_kind["Service"]) == 1  # the metrics Service is there all the same


@pytest.mark.parametrize("port", [9090, 9191])
def test_helm_template_service_monitor_scrapes_the_operators_metrics_port(
    helm: str, port: int, tmp_path: Path
) -> None:
    override = {
        "metrics": {
            "port": port,
            "serviceMonitor": {"enabled": True, "interval": "1m", "labels": {"release": "prom"}},
        }
    }
    by_kind = kinds(helm_template(helm, override, tmp_path))
    (monitor,) = by_kind["ServiceMonitor"]
    (service,) = by_kind["Service"]
    (deployment,) = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"] == "tao-system"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    # ServiceMonitor -> Service: its selector matches the Service's labels, in the release's namespace.
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["tao-system"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "1m", "scrapeTimeout": "10s"}
    # Service -> pod: the named port exists on the Service and targets the container's named port.
    (service_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert service_port["port"] == port
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container_port,) = [p for p in container["ports"] if p["name"] == service_port["targetPort"]]
    assert container_port["containerPort"] == port
    # ... and the operator serves its metrics on that very port.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TAO_METRICS_PORT"] == str(port)


def test_helm_template_service_monitor_needs_metrics_enabled(helm: str, tmp_path: Path) -> None:
    # Asking for a ServiceMonitor with metrics off fails with a message instead of dropping it silently.
    values_file = tmp_path / "monitor.yaml"
    values_file.write_text(
        yaml.safe_dump({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    )
    out = subprocess.run(
        [helm, "template", "tao", str(CHART), "-f", str(values_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "metrics.serviceMonitor.enabled needs metrics.enabled: true" in out.stderr
    override = {"metrics": {"enabled": False}}
    by_kind = kinds(helm_template(helm, override, tmp_path))
    assert "ServiceMonitor" not in by_kind and "Service" not in by_kind
    (deployment,) = by_kind["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "TAO_METRICS_PORT" not in {e["name"] for e in container["env"]}
    assert [p["name"] for p in container["ports"]] == ["healthz"]


@pytest.mark.parametrize("keep", [True, False])
def test_helm_template_crds_install_false_renders_no_crd(helm: str, keep: bool, tmp_path: Path) -> None:
    by_kind = kinds(helm_template(helm, {"crds": {"install": False, "keep": keep}}, tmp_path))
    assert "CustomResourceDefinition" not in by_kind
    # The rest of the release is all there.
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"} <= set(by_kind)


def test_helm_template_crd_without_keep_has_no_keep_annotation(helm: str, tmp_path: Path) -> None:
    (crd,) = kinds(helm_template(helm, {"crds": {"keep": False}}, tmp_path))["CustomResourceDefinition"]
    assert "annotations" not in crd["metadata"]
    assert crd["metadata"]["name"] == CRD_NAME
    assert crd["spec"] == render_crd()["spec"]


def test_taojob_user_roles_are_aggregated(helm: str, tmp_path: Path) -> None:
    roles = {
        doc["metadata"]["name"]: doc
        for doc in helm_template(helm, {}, tmp_path)
        if doc and doc.get("kind") == "ClusterRole" and "taojob" in doc["metadata"]["name"]
    }
    edit, view = roles["tao-tao-operator-taojob-edit"], roles["tao-tao-operator-taojob-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert "create" in edit["rules"][0]["verbs"] and edit["rules"][0]["resources"] == ["taojobs"]
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    off = helm_template(helm, {"rbac": {"create": True, "aggregateUserRoles": False}}, tmp_path)
    assert not [d for d in off if d and d.get("kind") == "ClusterRole" and "taojob" in d["metadata"]["name"]]
