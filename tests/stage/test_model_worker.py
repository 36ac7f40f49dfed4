"""Sampling in a process of its own (how evaluate and preflight run each vLLM model) gives what sampling in the
stage's process gives, and a failure there is reported by the stage, with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tao_trainer.generation import Sampling
from tao_trainer.spec import GenerationSpec
from tao_trainer.stages import model_worker

pytestmark = pytest.mark.filterwarnings("ignore")

RECORDS = [{"id": str(i), "prompt": f"{i}+{i}=", "fields": {}} for i in range(5)]


def test_a_child_process_samples_exactly_what_the_stage_process_samples(tiny_model: Path) -> None:
    gen = GenerationSpec.model_validate({"backend": "transformers", "maxNewTokens": 6, "candidates": 3})
    samplings = [Sampling.greedy(gen, seed=1), Sampling.from_spec(gen, seed=2)]
    here = model_worker.sample(gen, tiny_model.as_uri(), RECORDS, samplings, own_process=False)
    child = model_worker.sample(gen, tiny_model.as_uri(), RECORDS, samplings, own_process=True)
    assert child == here
    assert [len(per_prompt) for per_prompt in child[1]] == [3] * len(RECORDS)


def test_a_failure_in_the_child_is_raised_in_the_stage_with_its_reason(tmp_path: Path) -> None:
    gen = GenerationSpec.model_validate({"backend": "transformers"})
    missing = (tmp_path / "no-model").as_uri()
    with pytest.raises(RuntimeError, match=r"sampling from .*no-model in its own process failed: \w+Error"):
        model_worker.sample(gen, missing, RECORDS, [Sampling.greedy(gen, seed=0)], own_process=True)


def test_only_the_vllm_backend_gets_a_process_of_its_own() -> None:
    assert model_worker.needs_own_process("vllm")
    assert not model_worker.needs_own_process("transformers")
