"""The extraction example's manifest validates, its prompts are deterministic, and its label-free grounding
scorer and label metrics behave (doctests), without the model."""

from __future__ import annotations

import doctest
import json
from types import ModuleType

import examples_rig


def load(name: str) -> ModuleType:
    return examples_rig.load("extraction", name)


def test_prompts_are_deterministic_chats_with_the_label_apart() -> None:
    prepare = load("prepare")
    recs = prepare.records(300, 0)
    assert recs == prepare.records(300, 0) and len({json.dumps(r) for r in recs}) == 300
    for rec in recs[:20]:
        (message,) = rec["prompt"]
        sentence = message["content"].split("Sentence:")[1]
        assert all(str(v) in sentence for v in rec["person"].values())


def test_grounding_and_metrics_doctests() -> None:
    for name in ("grounding", "metrics"):
        assert doctest.testmod(load(name)).failed == 0


def test_manifest_validates() -> None:
    examples_rig.validate("extraction")
