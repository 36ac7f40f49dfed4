"""The multi-task example's manifest validates, its prompts carry their tasks and labels deterministically, and its
sort verifier needs no label (doctests), without pretraining the model."""

from __future__ import annotations

import doctest
from types import ModuleType

import examples_rig


def load(name: str) -> ModuleType:
    return examples_rig.load("multitask", name)


def test_sort_prompts_are_fixed_and_kept_apart_from_the_stop_set() -> None:
    prepare = load("prepare")
    prompts, stop = prepare.reserved_sorts()
    assert (prompts, stop) == prepare.reserved_sorts()
    assert len(set(prompts)) == prepare.NUM_SORT_PROMPTS and not set(prompts) & set(stop)
    assert doctest.testmod(prepare).failed == 0


def test_the_verifier_judges_from_the_prompt_alone() -> None:
    verify = load("verify_sort")
    assert doctest.testmod(verify).failed == 0
    prepare = load("prepare")
    prompts, _ = prepare.reserved_sorts()
    right = [prepare.sort_completion(d) for d in prompts[:50]]
    texts = [prepare.sort_prompt(d) for d in prompts[:50]]
    assert verify.sorted_digits(texts, right) == [1.0] * 50
    assert verify.sorted_digits(texts, [c[:-1] for c in right]) == [0.0] * 50


def test_manifest_validates() -> None:
    examples_rig.validate("multitask")
