"""generation.engine and teacher.engine: what a TAOJob's vLLM settings become as `vllm.LLM(...)` arguments."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tao_trainer.spec import GenerationSpec, LoopSpec
from tao_trainer.spec.engine import OWN_ENGINE_ARGS, EngineSpec, vllm_engine_kwargs
from tao_trainer.stages.common import candidate_engine


def _loop(generation: dict[str, Any]) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": "s3://b/model"},
            "prompts": {"uri": "s3://b/prompts.jsonl"},
            "storage": {"uri": "s3://b/runs"},
            "generation": generation,
            "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
        }
    )


def test_defaults_use_every_gpu_of_the_pod_and_vllms_own_defaults() -> None:
    kwargs = vllm_engine_kwargs(EngineSpec(), "/models/m", gpus=8)
    assert kwargs == {
        "model": "/models/m",
        "tensor_parallel_size": 8,
        "gpu_memory_utilization": 0.9,
        "dtype": "auto",
        "enforce_eager": False,
    }
    assert "max_model_len" not in kwargs  # vLLM then takes the model's own context length


def test_a_process_that_sees_no_gpu_still_asks_for_one() -> None:
    assert vllm_engine_kwargs(EngineSpec(), "/m", gpus=0)["tensor_parallel_size"] == 1


def test_every_field_maps_to_vllms_argument_of_the_same_meaning() -> None:
    engine = EngineSpec.model_validate(
        {
            "tensorParallelSize": 2,
            "gpuMemoryUtilization": 0.55,
            "maxModelLen": 4096,
            "dtype": "bfloat16",
            "enforceEager": True,
            "extraArgs": {
                "max_num_seqs": 64,
                "enable_prefix_caching": True,
                "quantization": "fp8",
                "seed": None,
            },
        }
    )
    assert vllm_engine_kwargs(engine, "/m", gpus=8) == {
        "model": "/m",
        "tensor_parallel_size": 2,  # the spec's, not the pod's 8
        "gpu_memory_utilization": 0.55,
        "max_model_len": 4096,
        "dtype": "bfloat16",
        "enforce_eager": True,
        "max_num_seqs": 64,
        "enable_prefix_caching": True,
        "quantization": "fp8",
        "seed": None,
    }


@pytest.mark.parametrize("key", sorted(OWN_ENGINE_ARGS))
def test_extra_args_cannot_set_what_the_project_sets(key: str) -> None:
    with pytest.raises(ValidationError, match=f"'{key}' is set by the project; use "):
        EngineSpec.model_validate({"extraArgs": {key: 1}})


def test_a_camel_case_spelling_of_our_own_argument_names_the_field_to_use() -> None:
    with pytest.raises(ValidationError, match="use engine.tensorParallelSize"):
        EngineSpec.model_validate({"extraArgs": {"tensorParallelSize": 4}})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max-num-seqs": 4}, "not a vLLM argument name"),
        ({"maxNumSeqs": 4}, "not a vLLM argument name"),
        ({"hf_overrides": {"a": 1}}, "extraArgs.hf_overrides: a string, number, boolean or null, not dict"),
        ({"lora_modules": ["a"]}, "not list"),
    ],
)
def test_extra_args_are_vllm_names_with_json_scalar_values(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EngineSpec.model_validate({"extraArgs": extra})


@pytest.mark.parametrize(
    "bad",
    [
        {"gpuMemoryUtilization": 0},
        {"gpuMemoryUtilization": 1.5},
        {"tensorParallelSize": 0},
        {"dtype": "int8"},
    ],
)
def test_out_of_range_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EngineSpec.model_validate(bad)


def test_the_teacher_has_its_own_engine_else_the_generation_one() -> None:
    plain = _loop({"engine": {"maxModelLen": 2048}})
    assert candidate_engine(plain.generation).max_model_len == 2048
    shared = _loop({"engine": {"maxModelLen": 2048}, "teacher": {"uri": "s3://b/teacher"}})
    assert candidate_engine(shared.generation).max_model_len == 2048
    own = _loop(
        {"engine": {"maxModelLen": 2048}, "teacher": {"uri": "s3://b/t", "engine": {"tensorParallelSize": 4}}}
    )
    teacher = candidate_engine(own.generation)
    assert (teacher.tensor_parallel_size, teacher.max_model_len) == (4, None)
    assert own.generation.engine.max_model_len == 2048  # the tuned model (evaluate) keeps generation.engine


def test_engine_settings_survive_the_round_trip_through_a_stage_config() -> None:
    gen = GenerationSpec.model_validate({"engine": {"enforceEager": True, "extraArgs": {"max_num_seqs": 8}}})
    again = GenerationSpec.model_validate(gen.model_dump(mode="json", by_alias=True))
    assert again.engine == gen.engine


# ------------------------------------------------------------------------------- GRPO's colocated vLLM (TRL)


@pytest.mark.parametrize(
    ("mode", "usable", "use"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("on", True, True),
        ("off", True, False),
        ("off", False, False),
    ],
)
def test_grpo_uses_vllm_colocated_when_asked_and_possible(mode: str, usable: bool, use: bool) -> None:
    from tao_trainer.generation import grpo_vllm_args

    args = grpo_vllm_args(mode, 0.25, EngineSpec(), usable=usable)
    expected = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.25} if use else {}
    assert args == {"use_vllm": False} if not use else expected


def test_grpo_vllm_on_without_vllm_or_gpu_is_an_error_not_a_silent_fallback() -> None:
    from tao_trainer.generation import grpo_vllm_args

    with pytest.raises(RuntimeError, match="training.grpo.vllm is 'on' but vllm cannot run here"):
        grpo_vllm_args("on", 0.3, EngineSpec(), usable=False)


def test_grpo_vllm_args_are_trl_grpo_config_fields(tmp_path: Any) -> None:
    from trl import GRPOConfig

    from tao_trainer.generation import grpo_vllm_args

    loop = _loop({"engine": {"maxModelLen": 1024}})
    grpo = loop.training.grpo
    assert (grpo.vllm, grpo.vllm_gpu_memory_utilization) == ("auto", 0.3)
    args = grpo_vllm_args(grpo.vllm, grpo.vllm_gpu_memory_utilization, loop.generation.engine, usable=True)
    # As the train stage builds it on a CPU (bf16 off); TRL looks for vllm itself only when the trainer starts.
    config = GRPOConfig(output_dir=str(tmp_path), bf16=False, **args)
    assert (
        config.use_vllm,
        config.vllm_mode,
        config.vllm_gpu_memory_utilization,
        config.vllm_max_model_length,
    ) == (
        True,
        "colocate",
        0.3,
        1024,
    )


# ------------------------------------------------------------------------------------- the CRD a cluster gets


def test_the_crd_carries_the_engine_settings_and_keeps_extra_args_as_written() -> None:
    from tao_operator.crd import render_crd

    spec = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]
    generation = spec["generation"]["properties"]
    for engine in (generation["engine"], generation["teacher"]["properties"]["engine"]):
        fields = engine["properties"]
        assert set(fields) == {
            "tensorParallelSize",
            "gpuMemoryUtilization",
            "maxModelLen",
            "dtype",
            "enforceEager",
            "extraArgs",
        }
        # Values of any JSON scalar type: the API server must keep them, pydantic checks them.
        assert fields["extraArgs"]["x-kubernetes-preserve-unknown-fields"] is True
        assert fields["dtype"]["enum"] == ["auto", "bfloat16", "float16", "float32"]
    assert generation["partSize"]["default"] == 256
    grpo = spec["training"]["properties"]["grpo"]["properties"]
    assert grpo["vllm"]["enum"] == ["auto", "on", "off"] and grpo["vllm"]["default"] == "auto"


def test_a_taojob_with_engine_settings_is_accepted_and_a_refused_key_names_its_field() -> None:
    from tao_operator.api import TAOJobSpec

    doc = {
        "model": {"uri": "s3://b/model"},
        "prompts": {"uri": "s3://b/prompts.jsonl"},
        "storage": {"uri": "s3://b/runs"},
        "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
        "generation": {
            "engine": {"tensorParallelSize": 8, "extraArgs": {"max_num_seqs": 512}},
            "teacher": {"uri": "s3://b/teacher", "engine": {"maxModelLen": 8192, "enforceEager": True}},
        },
    }
    job = TAOJobSpec.model_validate(doc)
    assert job.generation.engine.extra_args == {"max_num_seqs": 512}
    assert job.generation.teacher is not None and job.generation.teacher.engine is not None
    doc["generation"]["engine"]["extraArgs"] = {"dtype": "float16"}
    with pytest.raises(ValidationError, match=r"'dtype' is set by the project; use engine.dtype"):
        TAOJobSpec.model_validate(doc)


def test_an_adapter_champion_runs_as_its_base_with_lora_and_a_request_naming_the_adapter(
    tmp_path: Any,
) -> None:
    import json

    from tao_trainer import models
    from tao_trainer.generation import vllm_lora_args

    base, adapter = tmp_path / "base", tmp_path / "round-002"
    base.mkdir()
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 24, "target_modules": ["q_proj"]}))
    (adapter / models.ADAPTER_BASE_FILE).write_text(json.dumps({"uri": base.as_uri()}))

    found = models.adapter_of(str(adapter))
    assert found == models.Adapter(base=str(base), path=str(adapter), rank=24)
    kwargs = vllm_engine_kwargs(EngineSpec(extraArgs={"max_num_seqs": 8}), found.base, gpus=1, lora_rank=24)
    assert kwargs["model"] == str(base)  # the base, never the adapter folder
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"], kwargs["max_loras"]) == (True, 32, 1)
    assert vllm_lora_args(found) == {"lora_name": "champion", "lora_int_id": 1, "lora_path": str(adapter)}
    assert models.adapter_of(str(base)) is None  # a plain model: no LoRA arguments at all
    assert "enable_lora" not in vllm_engine_kwargs(EngineSpec(), str(base), gpus=1)


def test_an_adapter_whose_rank_vllm_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="LoRA rank 1024"):
        vllm_engine_kwargs(EngineSpec(), "/base", gpus=1, lora_rank=1024)
