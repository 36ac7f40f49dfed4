"""`tao serve` started with an adapter-serving Deployment's exact vLLM arguments (only the pod's mount paths and
the port mapped to this machine) answers under the served name with the adapter applied, and under
`<name>-base` with the base alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serve_process import tao_serve
from stage.test_serve import call
from stage.test_serve_openai import train_adapter

from tao_operator.api import parse_taojob
from tao_operator.builders import OperatorDefaults, serving_deployment
from tao_operator.builders.serving import CHAMPION_ADAPTER_DIR, PREVIOUS_ADAPTER_DIR

pytestmark = pytest.mark.filterwarnings("ignore")


def _deployment_args() -> list[str]:
    job = parse_taojob(
        {
            "apiVersion": "tao.dev/v1alpha1",
            "kind": "TAOJob",
            "metadata": {"name": "arith", "namespace": "ml", "uid": "u1"},
            "spec": {
                "model": {"uri": "s3://models/base"},
                "prompts": {"uri": "s3://data/prompts.jsonl"},
                "storage": {"uri": "s3://runs/tao"},
                "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
                "training": {"lora": {"r": 4, "targetModules": ["c_attn"], "merge": False}},
            },
        }
    )
    dep = serving_deployment(
        job, "s3://runs/tao/ml/arith/u1/round-002/train/model", 2, OperatorDefaults(), "s3://r1"
    )
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    args: list[str] = container["args"]
    return args


def test_tao_serve_runs_the_deployments_adapter_arguments(tiny_model: Path, tmp_path: Path) -> None:
    adapter = train_adapter(tiny_model, tmp_path / "champion")
    where = {
        "/models/model": str(tiny_model),
        CHAMPION_ADAPTER_DIR: str(adapter),
        PREVIOUS_ADAPTER_DIR: str(adapter),
    }
    args = []
    for arg in _deployment_args():
        for pod_path, local in where.items():
            arg = arg.replace(pod_path, local) if arg == pod_path or arg.endswith(f"={pod_path}") else arg
        args.append(arg)
    args[args.index("--port") + 1] = "0"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tao_serve(args, env) as served:
        url = served.url
        status, listed = call(url + "/models")
        assert status == 200
        assert [m["id"] for m in listed["data"]] == ["arith-base", "arith", "arith-previous"]

        def complete(model: str) -> str:
            body = {"model": model, "prompt": "SELECT", "max_tokens": 8, "temperature": 0}
            status, out = call(url + "/completions", body)
            assert status == 200, out
            text: str = out["choices"][0]["text"]
            return text

        assert complete("arith") != complete("arith-base")  # the adapter is applied under the served name
        assert complete("arith") == complete("arith-previous")  # same adapter here: same answer
    assert served.proc.returncode == 0, served.stderr
