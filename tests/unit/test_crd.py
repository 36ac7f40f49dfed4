"""The generated TAOJob CRD: no drift from api.py, a structural schema, and agreement with the models.

No API server runs here, so the API server's checks are mirrored: the CRD itself against the real
apiextensions.k8s.io/v1 schema (kubernetes-validate, strict), the structural-schema rules by walking the
schema, and manifests against the openAPIV3Schema turned into Draft 2020-12 the way the server reads it
(unknown fields rejected, as kubectl's strict field validation does). Defaulting is replayed too, because
the server writes CRD defaults into the object before the operator parses it with pydantic. The CEL rules
(x-kubernetes-validations) are evaluated with cel-python against objects they must accept and reject.
"""

from __future__ import annotations

import copy
import functools
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tao_operator import api, cli
from tao_operator.crd import CRD_NAME, diff_against, render_crd, render_crd_yaml
from tao_operator.crd_schema import cel_field
from tao_trainer.spec import scorers as specs

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "taojob.yaml"
CHART_CRD_FILE = ROOT / "charts" / "tao-operator" / "files" / "taojob.yaml"

Schema = dict[str, Any]


def _openapi() -> Schema:
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


SCHEMA = _openapi()


# --------------------------------------------------------------------------------------------- helpers


def walk(node: Schema, path: str = "$") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path; `properties` maps are followed, never taken for schemas."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def to_draft2020(node: Schema) -> Schema:
    """The OpenAPI 3.0 dialect of a CRD schema as Draft 2020-12, read the way the API server reads it."""
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if key == "properties":
            out[key] = {name: to_draft2020(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_draft2020(value)
        else:
            out[key] = value
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(flag) is True:
            out[flag] = out.pop(bound)
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Unknown fields: pruned by the server, or rejected under strict field validation (kubectl's default).
        out["additionalProperties"] = False
    return out


VALIDATOR = jsonschema.Draft202012Validator(to_draft2020(SCHEMA))


def schema_errors(doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def apply_defaults(node: Schema, value: Any) -> Any:
    """What the API server stores: schema defaults filled in wherever the parent object exists."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            value = {k: apply_defaults(extra, v) for k, v in value.items()}
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        value = [apply_defaults(node["items"], v) for v in value]
    return value


def manifest(**spec_overrides: Any) -> Schema:
    """A representative TAOJob: every scorer family, LoRA, pod settings, serving."""
    doc: Schema = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "arith", "namespace": "tao", "labels": {"team": "ml"}},
        "spec": {
            "model": {"uri": "s3://models/tiny-gpt2"},
            "prompts": {
                "uri": "s3://data/prompts.jsonl",
                "field": "question",
                "heldOutFraction": 0.2,
                "labelFields": ["answer"],
            },
            "storage": {"uri": "s3://runs/", "endpointUrl": "http://minio:9000", "pathStyle": True},
            "rounds": 3,
            "generation": {"candidates": 8, "temperature": 0.8, "teacher": {"uri": "s3://models/teacher"}},
            "scoring": {
                "scorers": [
                    {"type": "majority", "extract": r"answer: (\d+)", "minAgreement": 0.6},
                    {"type": "regex", "pattern": r"^<\d+>$", "weight": 0.5},
                    {
                        "type": "json",
                        "schema": {"type": "object", "required": ["a"]},
                        "extract": "first_object",
                    },
                    {
                        "type": "python",
                        "name": "len_ok",
                        "path": "rewards.py",
                        "function": "length",
                        "args": {"n": 3},
                    },
                    {"type": "my_rewards.math:accuracy", "weight": 0},
                ]
            },
            "training": {
                "method": "dpo",
                "learningRate": 2e-5,
                "lora": {"r": 8, "targetModules": ["q_proj", "v_proj"]},
                "dpo": {"beta": 0.2},
            },
            "evaluation": {
                "maxPrompts": 50,
                "scorers": [{"type": "regex", "pattern": "x", "mode": "search"}],
                "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\d+)"}],
            },
            "pods": {
                "default": {
                    "serviceAccountName": "tao-stage",
                    "nodeSelector": {"pool": "cpu"},
                    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                },
                "train": {
                    "gpus": 1,
                    "resources": {"limits": {"memory": "32Gi"}},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {}},
                    "labels": {"kueue.x-k8s.io/queue-name": "gpu"},
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": 3600,
                },
            },
            "credentials": {"secretRef": {"name": "s3-creds"}},
            "serving": {
                "replicas": 2,
                "args": ["--max-model-len", "4096"],
                "pod": {"gpus": 1},
                "pinnedRound": 0,
            },
        },
    }
    doc["spec"].update(spec_overrides)
    return doc


def full_status() -> Schema:
    stage = {"stage": "generate", "state": "Succeeded", "job": "arith-r1-generate", "startedAt": "t0"}
    return api.TAOJobStatus.model_validate(
        {
            "phase": "Training",
            "round": 2,
            "observedGeneration": 3,
            "runUri": "s3://runs/tao/arith/uid",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Training",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
            "rounds": [
                {
                    "round": 1,
                    "meanScore": 0.5,
                    "champion": {"score": 0.4, "accuracy": None},
                    "challenger": {"score": 0.6},
                    "promoted": True,
                    "stages": [stage],
                }
            ],
            "champion": {"round": 1, "uri": "s3://runs/tao/arith/uid/round-001/train/model", "score": 0.6},
            "serving": {
                "round": 1,
                "modelUri": "s3://m",
                "url": "http://arith:8000/v1",
                "deployment": "arith",
            },
        }
    ).dump()


def example_docs() -> list[Any]:
    params = []
    for path in sorted((ROOT / "examples").glob("**/*.yaml")):
        with path.open(encoding="utf-8") as f:
            for i, doc in enumerate(yaml.safe_load_all(f)):
                if isinstance(doc, dict) and doc.get("kind") == api.KIND:
                    params.append(pytest.param(doc, id=f"{path.relative_to(ROOT)}#{i}"))
    return params or [pytest.param(None, marks=pytest.mark.skip(reason="no TAOJob under examples/ yet"))]


# --------------------------------------------------------------------------------------------- drift


def test_committed_crd_matches_models() -> None:
    assert CRD_FILE.read_text(encoding="utf-8") == render_crd_yaml(), (
        "crds/taojob.yaml is out of date with operator/tao_operator/api.py: run `tao crd --output crds/taojob.yaml`"
    )


def test_chart_crd_matches_models() -> None:
    if not CHART_CRD_FILE.exists():
        pytest.skip("no chart CRD copy yet")
    assert CHART_CRD_FILE.read_text(encoding="utf-8") == render_crd_yaml(), (
        "charts/tao-operator/crds/taojob.yaml is out of date: run "
        "`tao crd --output charts/tao-operator/crds/taojob.yaml`"
    )


def test_render_is_deterministic_and_starts_with_the_header() -> None:
    text = render_crd_yaml()
    assert text == render_crd_yaml()
    assert text.startswith("# Generated by `tao crd` from operator/tao_operator/api.py")
    assert "&id" not in text and "*id" not in text  # no YAML anchors
    assert yaml.safe_load(text) == render_crd()


def test_cli_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crd.yaml"
    assert cli.main(["crd", "--output", str(out)]) == 0
    assert cli.main(["crd", "--check", str(out)]) == 0
    out.write_text(out.read_text().replace("Round served.", "Round shown."))
    capsys.readouterr()
    assert cli.main(["crd", "--check", str(out)]) == 1
    assert "+    - description: Round served." in capsys.readouterr().out
    assert diff_against(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------------------------- the CRD object


@pytest.mark.parametrize("version", ["1.25", kubernetes_validate.latest_version()])
def test_crd_is_a_valid_apiextensions_v1_object(version: str) -> None:
    # Strict: every key of every JSONSchemaProps node must be one the API server knows.
    kubernetes_validate.validate(render_crd(), version, strict=True)


def test_names_scope_and_subresources() -> None:
    crd = render_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == CRD_NAME == "taojobs.tao.dev"
    assert spec["group"] == api.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "TAOJob",
        "listKind": "TAOJobList",
        "plural": "taojobs",
        "singular": "taojob",
        "categories": ["ml", "tao"],
        "shortNames": ["tao"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


# --------------------------------------------------------------------------------------------- structural


def test_schema_is_structural() -> None:
    problems = []
    for path, node in walk(SCHEMA):
        for key in ("$ref", "$defs", "definitions", "const", "title", "anyOf", "oneOf", "allOf", "not"):
            if key in node:
                problems.append(f"{path}: has {key!r}")
        open_ended = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        if "type" not in node and not open_ended:
            problems.append(f"{path}: no type")
        if ("properties" in node or "additionalProperties" in node) and node.get("type") != "object":
            problems.append(f"{path}: properties under type {node.get('type')!r}")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        if node.get("additionalProperties") is False or node.get("uniqueItems"):
            problems.append(f"{path}: additionalProperties: false / uniqueItems are not allowed in a CRD")
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if flag in node and (node[flag] is not True or bound not in node):
                problems.append(f"{path}: {flag} must be OpenAPI 3.0's boolean beside {bound}")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{path}: array without one items schema")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: required {name!r} is not a property")
    assert not problems, "\n".join(problems)


def test_metadata_is_left_to_kubernetes() -> None:
    props = SCHEMA["properties"]
    assert props["metadata"] == {"type": "object"}
    assert props["apiVersion"]["type"] == props["kind"]["type"] == "string"
    assert SCHEMA["required"] == ["spec"]


def test_defaults_validate_against_their_own_schema() -> None:
    checked = 0
    for path, node in walk(SCHEMA):
        if "default" in node:
            schema = to_draft2020({k: v for k, v in node.items() if k != "default"})
            errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(node["default"])]
            assert not errors, f"{path}: default {node['default']!r}: {errors}"
            checked += 1
    assert checked > 30


def test_patterns_avoid_what_go_regexp_lacks() -> None:
    # The API server checks `pattern` with Go's RE2: no lookaround, no backreferences.
    for path, node in walk(SCHEMA):
        if "pattern" in node:
            re.compile(node["pattern"])
            assert not re.search(r"\(\?[=!<]|\\[1-9]", node["pattern"]), f"{path}: {node['pattern']}"


def test_free_form_fields_keep_unknown_fields() -> None:
    pod = SCHEMA["properties"]["spec"]["properties"]["pods"]["properties"]["train"]["properties"]
    for name in ("resources", "affinity"):
        assert pod[name] == {**pod[name], "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    for name in ("tolerations", "env"):
        assert pod[name]["items"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert pod["nodeSelector"]["additionalProperties"] == {"type": "string"}
    lora = SCHEMA["properties"]["spec"]["properties"]["training"]["properties"]["lora"]["properties"]
    assert lora["targetModules"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "type" not in lora["targetModules"]


# --------------------------------------------------------------------------------------------- scorers


def _scorer_items(where: str) -> Schema:
    spec = SCHEMA["properties"]["spec"]["properties"]
    return spec[where]["properties"]["scorers"]["items"]


@pytest.mark.parametrize("where", ["scoring", "evaluation"])
def test_scorer_item_is_the_union_of_all_families(where: str) -> None:
    item = _scorer_items(where)
    models = list(typing.get_args(specs.AnyScorerSpec))
    assert len(models) == len(specs.SCORER_UNION_TAGS)
    names = {n for m in models for n in m.model_json_schema(by_alias=True)["properties"]}
    assert set(item["properties"]) == names
    assert item["required"] == ["type"]
    assert item["properties"]["type"]["type"] == "string" and "enum" not in item["properties"]["type"]
    for tag in specs.BUILTIN_SCORER_TYPES:
        assert tag in item["properties"]["type"]["description"]
    # Only what all families share may carry a default: the server would write it into every scorer.
    shared = set.intersection(*(set(m.model_json_schema(by_alias=True)["properties"]) for m in models))
    defaulted = {n for n, s in item["properties"].items() if "default" in s}
    assert defaulted <= shared
    rules = {r["rule"] for r in item["x-kubernetes-validations"]}
    assert (
        'self.type != "majority" || has(self.extract) || (has(self.match) && self.match == "math")' in rules
    )
    assert 'self.type != "regex" || has(self.pattern)' in rules
    # `function` is a CEL reserved word: Kubernetes exposes the field as __function__
    assert 'self.type != "python" || has(self.__function__)' in rules
    assert 'self.type != "python" || has(self.path) != has(self.module)' in rules


def test_cel_rules_name_fields_that_exist() -> None:
    # The API server type-checks each rule against the schema when the CRD is created; cel-python does not,
    # so every field a rule reads must be in the schema it runs on.
    root = copy.deepcopy(SCHEMA)
    root["properties"]["metadata"]["properties"] = {"name": {}}  # the server declares metadata.name for CEL
    nodes = [root, root["properties"]["spec"], _scorer_items("scoring"), _scorer_items("evaluation")]
    for node in nodes:
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"]
            for match in re.finditer(r"\b(?:self|oldSelf)((?:\.\w+)+)(\(?)", rule["rule"]):
                parts = match.group(1).strip(".").split(".")
                if match.group(2):  # a method call such as .size()
                    parts = parts[:-1]
                sub = node
                for part in parts:
                    part = re.sub(r"^__(\w+)__$", r"\1", part)  # Kubernetes' escaping of CEL reserved words
                    assert part in sub.get("properties", {}), f"{rule['rule']} reads missing {match.group(1)}"
                    sub = sub["properties"][part]


def test_immutable_fields_have_transition_rules() -> None:
    rules = {r["rule"]: r["message"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"]}
    assert rules["self.model == oldSelf.model"].startswith("spec.model is immutable")
    assert rules["self.storage == oldSelf.storage"].startswith("spec.storage is immutable")
    assert any("oldSelf.prompts.field" in r for r in rules)
    assert any("oldSelf.prompts.labelFields" in r for r in rules)
    # model and storage are required, so those rules never read an absent field
    assert {"model", "storage", "prompts"} <= set(SCHEMA["properties"]["spec"]["required"])


# --------------------------------------------------------------------------------------------- CEL, evaluated
#
# Every x-kubernetes-validations rule runs in cel-python the way the API server runs it: `self` is the value at
# the rule's node after defaulting, with property names spelled as CEL sees them (`function` -> `__function__`),
# `oldSelf` the stored value for transition rules (update only). Each rule gets objects it must accept and
# objects it must reject; the scorer rules are also held against the pydantic models, which must agree.

CEL = celpy.Environment()


@functools.cache
def cel_program(rule: str) -> Any:
    return CEL.program(CEL.compile(rule))


def as_cel(node: Schema, value: Any) -> Any:
    """`value` as the API server hands it to CEL: the schema's property names escaped, map keys kept."""
    if isinstance(value, dict):
        props = node.get("properties")
        if props:
            return {cel_field(k) if k in props else k: as_cel(props.get(k, {}), v) for k, v in value.items()}
        extra = node.get("additionalProperties")
        return {k: as_cel(extra if isinstance(extra, dict) else {}, v) for k, v in value.items()}
    if isinstance(value, list):
        items = node.get("items")
        return [as_cel(items if isinstance(items, dict) else {}, v) for v in value]
    return value


def is_transition(rule: Schema) -> bool:
    return re.search(r"\boldSelf\b", rule["rule"]) is not None


def cel_accepts(node: Schema, rule: Schema, new: Any, old: Any = None) -> bool:
    """The rule's verdict on `new` (and `old`, for a transition rule). An evaluation error fails the test:
    the API server would reject the object with an error rather than the rule's message."""
    activation = {"self": celpy.json_to_cel(as_cel(node, new))}
    if is_transition(rule):
        assert old is not None, f"a transition rule needs oldSelf: {rule['rule']}"
        activation["oldSelf"] = celpy.json_to_cel(as_cel(node, old))
    result = cel_program(rule["rule"]).evaluate(activation)
    assert isinstance(result, celpy.celtypes.BoolType), f"{rule['rule']} gave {result!r}, not a boolean"
    return bool(result)


def cel_rules() -> list[tuple[str, Schema, Schema]]:
    return [
        (path, node, rule) for path, node in walk(SCHEMA) for rule in node.get("x-kubernetes-validations", [])
    ]


def cel_violations(doc: Schema, old: Schema | None = None) -> list[str]:
    """What the API server's CEL pass says about `doc` (created, or updated from `old`): the failed messages."""

    def visit(node: Schema, new: Any, prev: Any, path: str) -> list[str]:
        out = []
        for rule in node.get("x-kubernetes-validations", []):
            if is_transition(rule) and prev is None:
                continue  # transition rules run on update only, where the old value exists
            if not cel_accepts(node, rule, new, prev):
                out.append(f"{path}: {rule['message']}")
        if isinstance(new, dict):
            for name, sub in node.get("properties", {}).items():
                if name in new:
                    before = prev.get(name) if isinstance(prev, dict) else None
                    out += visit(sub, new[name], before, f"{path}.{name}")
        if isinstance(new, list) and isinstance(node.get("items"), dict):
            # Atomic lists: items are not correlated with the old list, so no oldSelf below (none is needed).
            for i, item in enumerate(new):
                out += visit(node["items"], item, None, f"{path}[{i}]")
        return out

    return visit(
        SCHEMA, apply_defaults(SCHEMA, doc), None if old is None else apply_defaults(SCHEMA, old), "$"
    )


def without(obj: Schema, *names: str) -> Schema:
    return {k: v for k, v in obj.items() if k not in names}


# One valid scorer of each built-in family that has a required field beyond `type`, and two that have none.
FAMILY_SCORERS: dict[str, Schema] = {
    "majority": {"type": "majority", "extract": r"answer: (\d+)"},
    "regex": {"type": "regex", "pattern": "^a$"},
    "python": {"type": "python", "path": "rewards.py", "function": "length"},
    "judge": {
        "type": "judge",
        "endpoint": {"url": "http://judge:8000/v1", "model": "j"},
        "rubric": "Correct?",
    },
    "reward_model": {"type": "reward_model", "model": "s3://models/rm"},
    "sql": {"type": "sql", "database": "file:///db.sqlite"},
}
OTHER_SCORERS: list[Schema] = [{"type": "json"}, {"type": "my_rewards.math:accuracy", "args": {"k": 1}}]

# (new, old) pairs per rule: the first list must be accepted, the second rejected. Keyed by the rule's message up
# to its first colon (the same key for the rule on scoring.scorers[] and on evaluation.scorers[]).
Case = tuple[Any, Any]


def _scorer_needs(tag: str, field: str) -> tuple[str, list[Case], list[Case]]:
    valid = [FAMILY_SCORERS[tag], *(s for t, s in FAMILY_SCORERS.items() if t != tag), *OTHER_SCORERS]
    return (
        f"a {tag} scorer needs '{field}'",
        [(without(s, field) if s["type"] != tag else s, None) for s in valid],
        [(without(FAMILY_SCORERS[tag], field), None)],
    )


def _spec(**prompts: Any) -> Schema:
    """The representative spec after defaulting, with prompts' fields replaced (None removes one)."""
    spec: Schema = apply_defaults(SCHEMA, manifest())["spec"]
    for key, value in prompts.items():
        if value is None:
            spec["prompts"].pop(key, None)
        else:
            spec["prompts"][key] = value
    return spec


def _spec_with(change: Any) -> Schema:
    spec = _spec()
    change(spec)
    return spec


def _named(name: str) -> Schema:
    doc = apply_defaults(SCHEMA, manifest())
    doc["metadata"]["name"] = name
    return doc


CEL_CASES: dict[str, tuple[list[Case], list[Case]]] = {
    "metadata.name must be a DNS-1123 label of at most 48 characters (lowercase letters, digits and '-')": (
        [(_named(n), None) for n in ("arith", "a", "a" * 48, "a-1", "0x")],
        [(_named(n), None) for n in ("a" * 49, "Arith", "-a", "a-", "a_b", "a.b", "")],
    ),
    "spec.model is immutable": (
        [(_spec(), _spec()), (_spec_with(lambda s: s.update(rounds=9)), _spec())],
        [(_spec_with(lambda s: s["model"].update(uri="s3://models/other")), _spec())],
    ),
    "spec.storage is immutable": (
        [(_spec(), _spec()), (_spec_with(lambda s: s["generation"].update(candidates=2)), _spec())],
        [
            (_spec_with(lambda s: s["storage"].update(uri="s3://elsewhere/")), _spec()),
            (_spec_with(lambda s: s["storage"].update(pathStyle=False)), _spec()),
        ],
    ),
    "spec.prompts.field is immutable": (
        [
            (_spec(), _spec()),
            (_spec(uri="s3://data/more.jsonl"), _spec()),  # the prompts may move, their field may not
            (_spec(field=None), _spec(field="prompt")),  # absent reads as the default, both ways
            (_spec(field="prompt"), _spec(field=None)),
        ],
        [
            (_spec(field="q"), _spec()),
            (_spec(field=None), _spec(field="question")),
            (_spec(field="question"), _spec(field=None)),
        ],
    ),
    "spec.prompts.labelFields is immutable": (
        [
            (_spec(), _spec()),
            (_spec(labelFields=None), _spec(labelFields=[])),
            (_spec(labelFields=[]), _spec(labelFields=None)),
        ],
        [
            (_spec(labelFields=["answer", "solution"]), _spec()),
            (_spec(labelFields=[]), _spec()),
            (_spec(labelFields=None), _spec()),
        ],
    ),
    "a python scorer needs exactly one of 'path' and 'module'": (
        [
            (FAMILY_SCORERS["python"], None),
            ({"type": "python", "module": "my_rewards", "function": "length"}, None),
            *((s, None) for s in [*OTHER_SCORERS, FAMILY_SCORERS["regex"]]),
        ],
        [
            ({**FAMILY_SCORERS["python"], "module": "my_rewards"}, None),
            (without(FAMILY_SCORERS["python"], "path"), None),
        ],
    ),
}
_key, _valid, _invalid = _scorer_needs("majority", "extract")
CEL_CASES["a majority scorer needs 'extract' unless match is math"] = (
    [*_valid, ({"type": "majority", "match": "math"}, None)],
    [*_invalid, ({"type": "majority", "match": "exact"}, None)],
)
for _tag, _field in [
    ("regex", "pattern"),
    ("python", "function"),
    ("judge", "endpoint"),
    ("judge", "rubric"),
    ("reward_model", "model"),
    ("sql", "database"),
]:
    _key, _valid, _invalid = _scorer_needs(_tag, _field)
    CEL_CASES[_key] = (_valid, _invalid)


def cel_case_key(rule: Schema) -> str:
    return str(rule["message"]).split(":")[0]


def test_every_cel_rule_has_cases() -> None:
    rules = cel_rules()
    assert len(rules) >= 21
    keys = {cel_case_key(rule) for _, _, rule in rules}
    assert keys == set(CEL_CASES), (
        f"rules without cases: {sorted(keys - set(CEL_CASES))}; cases without rules: {sorted(set(CEL_CASES) - keys)}"
    )


@pytest.mark.parametrize(
    ("path", "node", "rule"), [pytest.param(*r, id=f"{r[0]}: {r[2]['rule']}") for r in cel_rules()]
)
def test_cel_rule_accepts_valid_and_rejects_invalid(path: str, node: Schema, rule: Schema) -> None:
    valid, invalid = CEL_CASES[cel_case_key(rule)]
    assert valid and invalid
    for new, old in valid:
        assert cel_accepts(node, rule, new, old), f"{path}: {rule['rule']} rejects a valid value: {new!r}"
    for new, old in invalid:
        assert not cel_accepts(node, rule, new, old), (
            f"{path}: {rule['rule']} accepts an invalid value: {new!r}"
        )


def test_cel_scorer_cases_agree_with_the_models() -> None:
    """What the scorer rules accept, pydantic accepts; what they reject, pydantic rejects."""
    checked = 0
    for key, (valid, invalid) in CEL_CASES.items():
        if " scorer needs " not in key:
            continue
        for scorer, _ in valid:
            specs.parse_scorer_spec(scorer)
        for scorer, _ in invalid:
            with pytest.raises(ValueError):
                specs.parse_scorer_spec(scorer)
        checked += 1
    assert checked == 8


def test_cel_name_cases_agree_with_the_models() -> None:
    valid, invalid = CEL_CASES[cel_case_key(SCHEMA["x-kubernetes-validations"][0])]
    for doc, _ in valid:
        api.parse_taojob(doc)
    for doc, _ in invalid:
        with pytest.raises(api.SpecError):
            api.parse_taojob(doc)


def test_cel_accepts_the_representative_manifest_on_create_and_unchanged_update() -> None:
    assert cel_violations(manifest()) == []
    assert cel_violations(manifest(), manifest()) == []
    assert cel_violations(manifest(rounds=10), manifest()) == []


@pytest.mark.parametrize("doc", example_docs())
def test_cel_accepts_the_examples(doc: Schema) -> None:
    assert cel_violations(doc) == []
    assert cel_violations(doc, doc) == []


def test_cel_reports_what_the_api_server_would() -> None:
    doc = manifest()
    doc["metadata"]["name"] = "Arith"
    doc["spec"]["evaluation"]["scorers"].append(
        {"type": "judge", "endpoint": {"url": "http://j/v1", "model": "j"}}
    )
    assert cel_violations(doc) == [
        "$: " + SCHEMA["x-kubernetes-validations"][0]["message"],
        "$.spec.evaluation.scorers[1]: a judge scorer needs 'rubric'",
    ]
    moved = manifest(model={"uri": "s3://models/other"}, storage={"uri": "s3://other/"})
    messages = cel_violations(moved, manifest())
    assert [m.split(":")[0] for m in messages] == ["$.spec", "$.spec"]
    assert [m.split(": ", 1)[1].split(":")[0] for m in messages] == [
        "spec.model is immutable",
        "spec.storage is immutable",
    ]
    # The same change on create is no transition: nothing to compare with.
    assert cel_violations(moved) == []


# --------------------------------------------------------------------------------------------- manifests


def _both_ways(doc: Schema) -> None:
    assert not schema_errors(doc), schema_errors(doc)
    parsed = api.parse_taojob(doc)
    # The server stores the object with CRD defaults filled in; pydantic must read it the same way.
    stored = apply_defaults(SCHEMA, doc)
    assert not schema_errors(stored), schema_errors(stored)
    assert api.parse_taojob(stored).model_dump() == parsed.model_dump()


def test_representative_manifest_is_valid_both_ways() -> None:
    _both_ways(manifest())


def test_minimal_manifest_is_valid_both_ways() -> None:
    doc = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "m"},
        "spec": {
            "model": {"uri": "file:///m"},
            "prompts": {"uri": "file:///p.jsonl"},
            "storage": {"uri": "file:///s"},
            "scoring": {"scorers": [{"type": "regex", "pattern": "a"}, {"type": "json"}]},
            "training": {"lora": {}},
        },
    }
    _both_ways(doc)


@pytest.mark.parametrize("doc", example_docs())
def test_example_is_valid_both_ways(doc: Schema) -> None:
    _both_ways(doc)


def test_status_validates_and_parses() -> None:
    for status in (api.TAOJobStatus().dump(), full_status()):
        doc = {**manifest(), "status": status}
        assert not schema_errors(doc), schema_errors(doc)
        assert api.parse_taojob(doc).status == api.TAOJobStatus.model_validate(status)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s["generation"].update(candidates=0), id="candidates-0"),
        pytest.param(lambda s: s["scoring"]["scorers"][0].pop("type"), id="scorer-without-type"),
        pytest.param(lambda s: s["scoring"].update(scorers=[]), id="no-scorers"),
        pytest.param(lambda s: s["training"].update(method="ppo"), id="unknown-method"),
        pytest.param(lambda s: s["generation"].update(topP=0.0), id="exclusive-minimum"),
        pytest.param(lambda s: s["prompts"].update(heldOutFraction=1.0), id="exclusive-maximum"),
        pytest.param(lambda s: s.update(bogus=1), id="unknown-field"),
        pytest.param(lambda s: s["pods"]["train"].update(nodeSelector={"a": 1}), id="non-string-label"),
        pytest.param(lambda s: s["scoring"]["scorers"][1].update(name="bad name"), id="scorer-name-pattern"),
        pytest.param(lambda s: s.pop("model"), id="no-model"),
    ],
)
def test_invalid_manifest_fails_schema_and_model(change: Any) -> None:
    doc = manifest()
    change(doc["spec"])
    assert schema_errors(doc)
    with pytest.raises(api.SpecError):
        api.parse_taojob(doc)


# --------------------------------------------------------------------------------------------- printer columns


def test_printer_columns_point_at_status_fields() -> None:
    (version,) = render_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Phase", "Round", "Score", "Served", "Ready", "Message", "Age"]
    assert columns["Message"]["priority"] == 1 and "priority" not in columns["Ready"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert render_crd()["spec"]["names"]["categories"] == ["ml", "tao"]
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert columns["Served"]["description"] == "Round served."
    expected = {"Phase": "string", "Round": "integer", "Score": "number", "Served": "integer"}
    status = full_status()
    for name, kind in expected.items():
        column = columns[name]
        assert column["type"] == kind
        node, value = SCHEMA, {"status": status}
        for part in column["jsonPath"].strip(".").split("."):
            node = node["properties"][part]
            value = value[part]
        assert node["type"] == kind
        assert isinstance(value, {"string": str, "integer": int, "number": float}[kind])
