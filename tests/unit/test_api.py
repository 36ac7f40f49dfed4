"""TAOJob validation: a bad manifest fails with messages naming the field and what is allowed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tao_operator.api import SpecError, load_taojob_file, parse_taojob

VALID = {
    "apiVersion": "tao.dev/v1alpha1",
    "kind": "TAOJob",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"uri": "s3://models/base"},
        "prompts": {"uri": "s3://data/prompts/", "labelFields": ["answer"]},
        "storage": {"uri": "s3://runs"},
        "scoring": {"scorers": [{"type": "majority", "extract": r";(\d+)$"}]},
        "evaluation": {"metrics": [{"name": "accuracy", "field": "answer", "extract": r";(\d+)$"}]},
    },
}


def with_change(path: str, value: object) -> dict:
    doc = copy.deepcopy(VALID)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


def test_valid_manifest_gets_defaults() -> None:
    job = parse_taojob(VALID)
    assert job.spec.generation.candidates == 8
    assert job.spec.training.method == "sft"
    assert job.spec.prompts.field == "prompt"
    assert job.metadata.namespace == "default"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "spec.generation.candidates",
            0,
            "spec.generation.candidates: Input should be greater than or equal to 1",
        ),
        ("spec.generation.topP", 1.5, "spec.generation.topP"),
        ("spec.training.method", "ppo", "spec.training.method: Input should be 'sft', 'dpo' or 'grpo'"),
        ("spec.model.uri", "ftp://x/y", "must start with one of file://, s3://, hf://"),
        ("spec.storage.uri", "hf://org/model", "must start with one of file://, s3://"),
        ("spec.prompts.heldOutFraction", 1.0, "spec.prompts.heldOutFraction"),
        ("spec.generation.temprature", 0.7, "spec.generation.temprature: Extra inputs are not permitted"),
        ("spec.scoring.scorers", [], "spec.scoring.scorers: List should have at least 1 item"),
        ("spec.scoring.scorers", [{"type": "regex", "pattern": "("}], "spec.scoring.scorers[0]"),
        ("spec.scoring.scorers", [{"type": "vibes"}], "majority, regex, json, python"),
        ("metadata.name", "Not_A_DNS_Name", "metadata.name"),
    ],
)
def test_invalid_field_is_named(path: str, value: object, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_taojob(with_change(path, value))
    assert expected in str(err.value)


def test_metric_must_read_a_declared_label_field() -> None:
    doc = with_change("spec.prompts.labelFields", [])
    with pytest.raises(
        SpecError, match=r"evaluation.metrics\[0\].field 'answer' must be listed in prompts.labelFields"
    ):
        parse_taojob(doc)


def test_every_problem_is_reported_at_once() -> None:
    doc = with_change("spec.generation.candidates", 0)
    doc["spec"]["training"] = {"learningRate": -1}
    with pytest.raises(SpecError) as err:
        parse_taojob(doc)
    assert len(err.value.problems) == 2


def test_relative_paths_resolve_beside_the_manifest(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["spec"]["model"]["uri"] = "work/base-model"
    doc["spec"]["storage"]["uri"] = "./runs"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    job = load_taojob_file(str(tmp_path / "job.yaml"))
    assert job.spec.model.uri == (tmp_path / "work/base-model").as_uri()
    assert job.spec.storage.uri == (tmp_path / "runs").as_uri()
    assert job.spec.prompts.uri == "s3://data/prompts/"


def test_scorer_data_files_and_prompt_prefixes_resolve_beside_the_manifest(tmp_path: Path) -> None:
    doc = copy.deepcopy(VALID)
    doc["spec"]["prompts"]["uri"] = "work/prompts/"
    doc["spec"]["scoring"]["scorers"] = [
        {"type": "sql", "database": "work/shop.sqlite", "require": True, "passAt": 0.5},
        {"type": "reward_model", "model": "work/rm"},
        {"type": "reward_model", "name": "hub_rm", "model": "hf://org/rm"},
    ]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(doc))
    sql, rm, hub = load_taojob_file(str(tmp_path / "job.yaml")).spec.scoring.scorers
    assert sql.database == (tmp_path / "work/shop.sqlite").as_uri()
    assert rm.model == (tmp_path / "work/rm").as_uri() and hub.model == "hf://org/rm"
    job = load_taojob_file(str(tmp_path / "job.yaml"))
    assert job.spec.prompts.uri == (tmp_path / "work/prompts").as_uri() + "/"  # still a prefix


def test_a_file_without_a_taojob_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(SpecError, match="expected exactly one document of kind TAOJob"):
        load_taojob_file(str(tmp_path / "x.yaml"))
