"""Each stage on a tiny real model: prepare, generate, score, train (SFT, DPO, GRPO), evaluate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tao_trainer import storage
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec

pytestmark = pytest.mark.filterwarnings("ignore")


def loop_spec(model: Path, prompts: Path, runs: Path, **overrides: Any) -> LoopSpec:
    doc: dict[str, Any] = {
        "model": {"uri": model.as_uri()},
        "prompts": {"uri": prompts.as_uri(), "heldOutFraction": 0.25, "labelFields": ["answer"]},
        "storage": {"uri": runs.as_uri()},
        "generation": {"candidates": 4, "maxNewTokens": 6, "shards": 2, "batchSize": 8},
        "scoring": {
            "scorers": [
                {"type": "regex", "pattern": r"\d", "mode": "search"},
                {"type": "majority", "extract": r"(\d)"},
            ]
        },
        "training": {"method": "sft", "learningRate": 1e-3, "batchSize": 4, "sft": {"minScore": 0.0}},
        "evaluation": {
            "maxPrompts": 6,
            "minImprovement": -1.0,
            "alarms": False,  # these tests force a promotion of a random tiny model
            "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\d)"}],
        },
    }
    for key, value in overrides.items():
        doc[key] = doc.get(key, {}) | value if isinstance(value, dict) else value
    return LoopSpec.model_validate(doc)


@pytest.fixture
def workspace(tmp_path: Path, tiny_model: Path) -> dict[str, Path]:
    prompts = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps({"prompt": f"{a}+{b}=", "answer": str((a + b) % 10), "topic": "sum"})
        for a in range(6)
        for b in range(4)
    ]
    lines.insert(3, "{not json")
    prompts.write_text("\n".join(lines) + "\n")
    return {"model": tiny_model, "prompts": prompts, "runs": tmp_path / "runs"}


def config(
    ws: dict[str, Path], stage: str, round_: int = 1, model_uri: str | None = None, **overrides: Any
) -> StageConfig:
    spec = loop_spec(ws["model"], ws["prompts"], ws["runs"], **overrides)
    return StageConfig(
        stage=stage,
        round=round_,
        run_uri=(ws["runs"] / "ns" / "job" / "uid").as_uri(),
        model_uri=model_uri or spec.model.uri,
        spec=spec,
    )


def run_through(ws: dict[str, Path], *stages: str, **overrides: Any) -> dict[str, Any]:
    from tao_trainer.cli import _runner

    results = {}
    for stage in stages:
        results[stage] = _runner(stage)(config(ws, stage, **overrides))
    return results


def test_prepare_shards_prompts_strips_labels_and_sets_rejects_aside(workspace: dict[str, Path]) -> None:
    res = run_through(workspace, "prepare")["prepare"]
    lay = RunLayout(config(workspace, "prepare").run_uri)
    assert res.counts["rejects"] == 1
    rejects = storage.read_jsonl(lay.rejects(1))
    assert rejects[0]["line"] == 4 and "JSON" in rejects[0]["reason"]
    shards = [storage.read_jsonl(lay.shard("prompts", 1, i)) for i in range(2)]
    assert sum(len(s) for s in shards) == res.counts["prompts"] > 0
    held = storage.read_jsonl(lay.heldout(1))
    assert len(held) == res.counts["heldOut"] > 0
    for rec in [*shards[0], *shards[1], *held]:
        assert "answer" not in rec["fields"] and rec["fields"]["topic"] == "sum"
    labels = storage.read_jsonl(lay.heldout_labels(1))
    assert {row["id"] for row in labels} == {rec["id"] for rec in held}
    assert not {rec["id"] for s in shards for rec in s} & {rec["id"] for rec in held}


def test_generate_writes_n_candidates_and_skips_complete_shards(workspace: dict[str, Path]) -> None:
    res = run_through(workspace, "prepare", "generate")["generate"]
    lay = RunLayout(config(workspace, "generate").run_uri)
    assert res.counts["candidates"] == 4 * res.counts["prompts"]
    assert res.counts["shardsDone"] == 2
    shard0 = Path(lay.shard("candidates", 1, 0).removeprefix("file://"))
    before = shard0.stat().st_mtime_ns
    storage.delete(lay.shard("candidates", 1, 1))
    again = run_through(workspace, "generate")["generate"]
    assert (again.counts["shardsDone"], again.counts["shardsSkipped"]) == (1, 1)
    assert shard0.stat().st_mtime_ns == before
    for rec in storage.read_jsonl(lay.shard("candidates", 1, 1)):
        assert len(rec["candidates"]) == 4 and all(isinstance(c, str) for c in rec["candidates"])


def test_score_records_total_and_per_scorer_values(workspace: dict[str, Path]) -> None:
    res = run_through(workspace, "prepare", "generate", "score")["score"]
    lay = RunLayout(config(workspace, "score").run_uri)
    rows = storage.read_jsonl(lay.shard("scores", 1, 0))
    assert set(rows[0]["perScorer"]) == {"regex", "majority"}
    assert len(rows[0]["scores"]) == 4
    assert res.counts["candidates"] == sum(
        len(r["scores"]) for i in range(2) for r in storage.read_jsonl(lay.shard("scores", 1, i))
    )


def _weights(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).lm_head.weight.detach().clone()


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_training_runs_a_real_step_and_writes_a_loadable_model(
    workspace: dict[str, Path], method: str
) -> None:
    # GRPO's majority vote is taken over the round's candidates (training.grpo.votes), so generate runs first.
    stages = (
        ("prepare", "generate", "train") if method == "grpo" else ("prepare", "generate", "score", "train")
    )
    # DPO needs pairs with a margin: a regex that only some random candidates satisfy gives them.
    overrides: dict[str, Any] = {
        "training": {
            "method": method,
            "learningRate": 1e-2,
            "batchSize": 4,
            "sft": {"minScore": 0.0},
            "dpo": {"minMargin": 0.1},
            "epochs": 1,
        }
    }
    res = run_through(workspace, *stages, **overrides)["train"]
    assert res.ok and res.counts["examples"] > 0 and res.counts["steps"] >= 1
    model_dir = Path(res.outputs["model"].removeprefix("file://"))
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    if method != "grpo":  # GRPO with random rewards may legitimately get zero advantage and not move
        import torch

        assert not torch.equal(_weights(model_dir), _weights(workspace["model"]))


def _chosen_logprob(model_dir: Path, rows: list[dict[str, Any]]) -> float:
    """Mean log-probability per token of each pair's chosen answer after its prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tok(row["prompt"])["input_ids"]
            answer = tok(row["chosen"], add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
            picked = torch.log_softmax(logits, -1)[range(len(answer)), answer]
            total, count = total + float(picked.sum()), count + len(answer)
    return total / count


def test_dpo_sft_weight_keeps_learning_the_chosen_answers(workspace: dict[str, Path]) -> None:
    import shutil

    dpo = {"method": "dpo", "learningRate": 5e-3, "batchSize": 4, "epochs": 3, "dpo": {"minMargin": 0.1}}
    run_through(workspace, "prepare", "generate", "score", training=dpo)
    plain = dict(workspace, runs=workspace["runs"].parent / "runs-plain")
    shutil.copytree(workspace["runs"], plain["runs"])  # the same pairs, trained twice
    with_sft = run_through(workspace, "train", training=dpo | {"dpo": dpo["dpo"] | {"sftWeight": 1.0}})
    without = run_through(plain, "train", training=dpo | {"dpo": dpo["dpo"] | {"sftWeight": 0.0}})
    rows = storage.read_jsonl(f"{RunLayout(config(workspace, 'train').run_uri).train_dir(1)}/dataset.jsonl")
    assert rows
    models = [Path(r["train"].outputs["model"].removeprefix("file://")) for r in (with_sft, without)]
    before, after_sft, after_plain = (_chosen_logprob(m, rows) for m in (workspace["model"], *models))
    # The likelihood term raises the chosen answers' probability beyond what the preference alone does.
    assert after_sft > after_plain and after_sft > before, (before, after_sft, after_plain)


def test_grpo_votes_on_the_rounds_candidates_or_on_its_own_group(workspace: dict[str, Path]) -> None:
    grpo = {"method": "grpo", "learningRate": 1e-3, "batchSize": 4, "epochs": 1}
    res = run_through(workspace, "prepare", "generate", "train", training=grpo)["train"]
    assert res.ok and res.counts["steps"] >= 1
    lay = RunLayout(config(workspace, "train").run_uri)
    rows = storage.read_jsonl(f"{lay.train_dir(1)}/dataset.jsonl")
    generated = [rec for i in range(2) for rec in storage.read_jsonl(lay.shard("candidates", 1, i))]
    # Each prompt's vote is the 4 candidates generate sampled for it, not the completions of its GRPO group.
    assert sorted(row["tao_votes"] for row in rows) == sorted(rec["candidates"] for rec in generated)
    assert all(len(row["tao_votes"]) == 4 for row in rows)

    # votes: group needs no generate stage (its vote is the group's own completions), and a group of 2 is asked.
    workspace["runs"] = workspace["runs"].parent / "runs-group"
    group = grpo | {"grpo": {"votes": "group", "numGenerations": 2}}
    assert config(workspace, "train", training=group).spec.stages() == (
        "preflight",
        "prepare",
        "train",
        "evaluate",
    )
    res = run_through(workspace, "prepare", "train", training=group)["train"]
    assert res.ok and res.counts["steps"] >= 1
    rows = storage.read_jsonl(f"{RunLayout(config(workspace, 'train').run_uri).train_dir(1)}/dataset.jsonl")
    assert rows and not any("tao_votes" in row for row in rows)


def test_grpo_leaves_out_a_prompt_without_candidates_and_says_so_when_none_has_any(
    workspace: dict[str, Path],
) -> None:
    """A teacher endpoint's failed requests can leave a prompt with no candidate (its row says how many are
    `missing`): GRPO's majority has nothing to vote on there, so that prompt sits the round out; when no prompt
    has any, the train stage fails with what happened and what to change, and trains nothing."""
    grpo = {"method": "grpo", "learningRate": 1e-3, "batchSize": 4, "epochs": 1}
    run_through(workspace, "prepare", "generate", training=grpo)
    lay = RunLayout(config(workspace, "train").run_uri)
    shard = lay.shard("candidates", 1, 0)
    rows = storage.read_jsonl(shard)
    lost = rows[0] | {"candidates": [], "sources": [], "missing": 4}
    storage.write_jsonl(shard, [lost, *rows[1:]])
    generated = [rec for i in range(2) for rec in storage.read_jsonl(lay.shard("candidates", 1, i))]

    res = run_through(workspace, "train", training=grpo)["train"]
    assert res.ok and res.counts["examples"] == len(generated) - 1
    assert res.counts["candidates"] == 4 * (len(generated) - 1)  # the candidates voted on
    dataset = storage.read_jsonl(f"{lay.train_dir(1)}/dataset.jsonl")
    assert lost["prompt"] not in [row["prompt"] for row in dataset]
    assert all(len(row["tao_votes"]) == 4 for row in dataset)

    workspace["runs"] = workspace["runs"].parent / "runs-none"
    run_through(workspace, "prepare", "generate", training=grpo)
    lay = RunLayout(config(workspace, "train").run_uri)
    for i in range(2):
        shard = lay.shard("candidates", 1, i)
        storage.write_jsonl(
            shard, [row | {"candidates": [], "missing": 4} for row in storage.read_jsonl(shard)]
        )
    with pytest.raises(ValueError, match="round 1: no prompt to train on") as failed:
        run_through(workspace, "train", training=grpo)
    assert "candidatesMissing" in str(failed.value) and "training.grpo.votes: group" in str(failed.value)
    assert not storage.exists(lay.model(1) + "/config.json")


def test_lora_adapter_is_merged_into_a_plain_model(workspace: dict[str, Path]) -> None:
    overrides = {
        "training": {
            "method": "sft",
            "learningRate": 1e-2,
            "batchSize": 4,
            "sft": {"minScore": 0.0},
            "lora": {"r": 4, "alpha": 8, "targetModules": ["c_attn"]},
        }
    }
    res = run_through(workspace, "prepare", "generate", "score", "train", **overrides)["train"]
    model_dir = Path(res.outputs["model"].removeprefix("file://"))
    assert (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists()


def test_evaluate_compares_champion_and_challenger_and_reports_label_metrics_apart(
    workspace: dict[str, Path],
) -> None:
    res = run_through(workspace, "prepare", "generate", "score", "train", "evaluate")["evaluate"]
    assert res.ok and res.promoted is not None
    for side in ("champion", "challenger"):
        assert 0.0 <= res.metrics[f"{side}.score"] <= 2.0
        assert 0.0 <= res.metrics[f"{side}.accuracy"] <= 1.0
    report = storage.read_json(RunLayout(config(workspace, "evaluate").run_uri).eval_report(1))
    assert report["labelMetrics"]["accuracy"] == {
        "type": "exact_match",
        "field": "answer",
        "usesLabels": True,
        "gates": False,
    }
    assert report["referenceSamples"] == 8  # majority judges greedy answers against 4 samples of each model
    assert report["verdict"] == res.message


def test_stage_cli_reports_a_failure_as_a_result(workspace: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(workspace, "generate")  # no prepare: the prompt shards do not exist
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json(by_alias=True))
    result_path = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tao_trainer.cli",
            "generate",
            "--config",
            str(cfg_path),
            "--result",
            str(result_path),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert proc.returncode == 1
    result = json.loads(result_path.read_text())
    assert (
        result["ok"] is False
        and "FileNotFoundError" in result["message"]
        and "shard-00000" in result["message"]
    )
    assert len(result_path.read_bytes()) < 4096


def test_a_whole_round_on_s3_storage_with_the_model_in_s3(
    tmp_path: Path, tiny_model: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loading code: the model, the prompts and every artifact on an S3 protocol server."""
    from tao_trainer.cli import _runner

    monkeypatch.setenv("TAO_CACHE_DIR", str(tmp_path / "cache"))
    model_uri = f"s3://{s3_bucket}/models/tiny"
    storage.upload_dir(tiny_model, model_uri)
    prompts = "".join(
        json.dumps({"prompt": f"{a}*{b}=", "answer": str(a * b)}) + "\n" for a in range(6) for b in range(4)
    )
    storage.write_text(f"s3://{s3_bucket}/data/prompts.jsonl", prompts)
    spec = LoopSpec.model_validate(
        {
            "model": {"uri": model_uri},
            "prompts": {"uri": f"s3://{s3_bucket}/data/", "heldOutFraction": 0.25, "labelFields": ["answer"]},
            "storage": {"uri": f"s3://{s3_bucket}/runs"},
            "generation": {"candidates": 2, "maxNewTokens": 4},
            "scoring": {"scorers": [{"type": "regex", "pattern": r"\d", "mode": "search"}]},
            "training": {"learningRate": 1e-3, "batchSize": 4, "sft": {"minScore": 0.0}},
            "evaluation": {"maxPrompts": 4, "minImprovement": -1.0, "alarms": False},
        }
    )
    run_uri = f"s3://{s3_bucket}/runs/ns/job/uid"
    for stage in ("prepare", "generate", "score", "train", "evaluate"):
        result = _runner(stage)(
            StageConfig(stage=stage, round=1, run_uri=run_uri, model_uri=model_uri, spec=spec)
        )
        assert result.ok, (stage, result.message)
    lay = RunLayout(run_uri)
    assert storage.exists(f"{lay.model(1)}/config.json") and storage.exists(lay.eval_report(1))
    assert not any(uri.startswith("file:") for uri in storage.list_uris(run_uri))
