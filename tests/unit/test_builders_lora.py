"""Serving an unmerged LoRA champion: the base downloaded once, the champion's adapter (and the one it replaced)
beside it, vLLM started with its LoRA flags, the adapter recorded on the pod template. Manifests validated
strictly against the Kubernetes schemas, as every other builder's."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from unit.test_builders import DEFAULTS, K8S_VERSIONS, taojob

from tao_operator.api import ANNOTATION_ADAPTER_URI, ANNOTATION_MODEL_URI
from tao_operator.builders import serving_deployment
from tao_operator.builders.serving import CHAMPION_ADAPTER_DIR, PREVIOUS_ADAPTER_DIR
from tao_operator.children import drifted, with_template_hash
from tao_operator.plan import what_to_serve
from tao_operator.status import served_uri
from tao_trainer.contract import StageResult
from tao_trainer.layout import RunLayout

RUN = "s3://runs/tao/ml/demo/uid"
ROUND_2, ROUND_1 = f"{RUN}/round-002/train/model", f"{RUN}/round-001/train/model"


def adapter_job(**lora: Any) -> Any:
    return taojob(
        rounds=3,
        model={"uri": "hf://Qwen/Qwen3-8B", "revision": "abc123"},
        training={"lora": {"r": 24, "merge": False} | lora},
        serving={"servedModelName": "arith", "args": ["--max-model-len", "4096"]},
    )


def _pod(dep: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = dep["spec"]["template"]["spec"]
    return pod


def _args(dep: dict[str, Any]) -> list[str]:
    args: list[str] = _pod(dep)["containers"][0]["args"]
    return args


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("previous", [None, ROUND_1])
def test_adapter_serving_deployments_are_valid_kubernetes(version: str, previous: str | None) -> None:
    dep = serving_deployment(adapter_job(), ROUND_2, 2, DEFAULTS, previous)
    kubernetes_validate.validate(dep, version, strict=True)


def test_the_base_is_downloaded_once_and_each_adapter_beside_it() -> None:
    dep = serving_deployment(adapter_job(), ROUND_2, 2, DEFAULTS, ROUND_1)
    inits = {c["name"]: c["command"] for c in _pod(dep)["initContainers"]}
    assert inits == {
        # The base at its pinned revision, where vLLM reads its model.
        "download": [
            *("tao-stage", "download", "--uri", "hf://Qwen/Qwen3-8B", "--to", "/models/model"),
            *("--revision", "abc123"),
        ],
        "download-adapter": ["tao-stage", "download", "--uri", ROUND_2, "--to", CHAMPION_ADAPTER_DIR],
        "download-previous-adapter": [
            "tao-stage",
            "download",
            "--uri",
            ROUND_1,
            "--to",
            PREVIOUS_ADAPTER_DIR,
        ],
    }


def test_vllm_serves_the_base_with_the_adapter_under_the_stable_served_name() -> None:
    args = _args(serving_deployment(adapter_job(), ROUND_2, 2, DEFAULTS, ROUND_1))
    assert args == [
        "/models/model",
        *("--served-model-name", "arith-base"),
        *("--port", "8000"),
        "--enable-lora",
        *("--max-lora-rank", "32"),  # r=24, rounded up to a rank vLLM accepts
        "--lora-modules",
        f"arith={CHAMPION_ADAPTER_DIR}",
        f"arith-previous={PREVIOUS_ADAPTER_DIR}",
        *("--max-model-len", "4096"),
    ]
    first_adapter = _args(serving_deployment(adapter_job(), ROUND_1, 1, DEFAULTS, None))
    assert first_adapter[first_adapter.index("--lora-modules") + 1 :] == [
        f"arith={CHAMPION_ADAPTER_DIR}",
        "--max-model-len",
        "4096",
    ]


def test_the_served_adapter_is_desired_state_and_a_new_one_rolls_the_deployment() -> None:
    job = adapter_job()
    round_2 = with_template_hash(serving_deployment(job, ROUND_2, 2, DEFAULTS, ROUND_1))
    annotations = round_2["spec"]["template"]["metadata"]["annotations"]
    assert annotations[ANNOTATION_MODEL_URI] == "hf://Qwen/Qwen3-8B"
    assert annotations[ANNOTATION_ADAPTER_URI] == ROUND_2
    assert served_uri(round_2) == ROUND_2  # the round's model, as status.serving reports it

    round_3 = with_template_hash(
        serving_deployment(job, f"{RUN}/round-003/train/model", 3, DEFAULTS, ROUND_2)
    )
    assert drifted(round_2, round_3)  # a promotion switches the adapter: the Deployment is patched and rolls
    assert not drifted(round_2, with_template_hash(serving_deployment(job, ROUND_2, 2, DEFAULTS, ROUND_1)))


def test_merged_rounds_and_the_base_are_served_as_full_models() -> None:
    for job, uri, round_ in (
        (adapter_job(merge=True), ROUND_2, 2),
        (taojob(), ROUND_2, 2),
        (adapter_job(), "hf://Qwen/Qwen3-8B", 0),  # pinnedRound 0: the base itself, no adapter
    ):
        dep = serving_deployment(job, uri, round_, DEFAULTS, ROUND_1)
        assert "--enable-lora" not in _args(dep)
        assert [c["name"] for c in _pod(dep)["initContainers"]] == ["download"]
        assert ANNOTATION_ADAPTER_URI not in dep["spec"]["template"]["metadata"]["annotations"]
        assert served_uri(dep) == uri


def test_a_rollback_serves_the_pinned_adapter_beside_the_one_it_replaced() -> None:
    spec, lay = adapter_job().spec.loop(), RunLayout(RUN)
    results = {
        (r, s): StageResult(stage=s, round=r, promoted=True if s == "evaluate" else None)
        for r in (1, 2, 3)
        for s in ("train", "evaluate")
    }
    champion = what_to_serve(spec, lay, results, enabled=True, pinned_round=None)
    pinned = what_to_serve(spec, lay, results, enabled=True, pinned_round=2)
    assert champion is not None and pinned is not None
    assert (champion.round, champion.previous_uri) == (3, ROUND_2)
    assert (pinned.round, pinned.model_uri, pinned.previous_uri) == (2, ROUND_2, ROUND_1)
