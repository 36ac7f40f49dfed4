"""The reward_model scorer on a tiny, randomly initialised sequence-classification model (no download)."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from tao_trainer import storage
from tao_trainer.scorers import RewardModelScorer, ScorerError, build_scorer, score_all

PROMPTS = ["2+2=", "2+2=", "2+2=", "Name a colour:", "Name a colour:"]
COMPLETIONS = ["4", "four, I believe", "5", "blue", "a long answer that goes on and on about colours " * 2]


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny reward model (GPT2ForSequenceClassification, num_labels=1) with the char-level tokenizer
    of tests/tiny_model.py, the same with a chat template, and the causal LM itself (not a reward model)."""
    import torch
    from tiny_model import build_tiny_model
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("reward")
    lm = build_tiny_model(root / "lm")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(lm)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=256,
        n_embd=32,
        n_layer=2,
        n_head=4,
        num_labels=1,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = GPT2ForSequenceClassification(config)
    rm = root / "rm"
    model.save_pretrained(rm)
    tokenizer.save_pretrained(rm)
    chat = root / "rm-chat"
    shutil.copytree(rm, chat)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(chat)
    return {"rm": rm, "chat": chat, "lm": lm}


def scorer_for(path: Path | str, **fields: Any) -> RewardModelScorer:
    return RewardModelScorer(model=str(path), **fields)


def test_values_finite_deterministic_and_independent_of_batching(reward_models: dict[str, Path]) -> None:
    scorer = scorer_for(reward_models["rm"], batch_size=2)
    values = scorer(PROMPTS, COMPLETIONS)
    assert len(values) == len(COMPLETIONS)
    assert all(v is not None and math.isfinite(v) for v in values)
    assert len({round(v, 6) for v in values}) == len(values)  # type: ignore[arg-type]  # it tells them apart
    assert scorer(PROMPTS, COMPLETIONS) == values
    assert scorer_for(reward_models["rm"], batch_size=2)(PROMPTS, COMPLETIONS) == values  # a fresh load
    for batch_size in (1, 3, 64):
        other = scorer_for(reward_models["rm"], batch_size=batch_size)(PROMPTS, COMPLETIONS)
        assert other == pytest.approx(values, abs=1e-4)
    # Order restored after sorting by length: each value is the one that candidate gets on its own.
    alone = [scorer([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert alone == pytest.approx(values, abs=1e-4)
    assert scorer(PROMPTS[::-1], COMPLETIONS[::-1]) == pytest.approx(values[::-1], abs=1e-4)
    assert scorer.stats["texts"] > 0 and scorer.stats["truncated"] == 0
    assert scorer([], []) == []


def test_chat_template_is_used_when_present(reward_models: dict[str, Path]) -> None:
    chat = scorer_for(reward_models["chat"])
    plain = scorer_for(reward_models["rm"])
    chat._load()
    texts, templated = chat._texts(["2+2="], ["4"])
    assert (texts, templated) == (["<user>2+2=<assistant>4"], True)
    # Same weights, so the templated text scores like the same text given without a template.
    assert chat(["2+2="], ["4"]) == pytest.approx(plain(["<user>2+2="], ["<assistant>4"]), abs=1e-5)
    # Conversational prompts and completions are kept as messages.
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert chat._texts([messages], [[{"role": "assistant", "content": "A"}]])[0] == [
        "<system>S<user>Q<assistant>A"
    ]
    plain._load()
    assert plain._texts([messages], ["A"]) == (["S\nQA"], False)


def test_long_inputs_keep_their_end(reward_models: dict[str, Path]) -> None:
    scorer = scorer_for(reward_models["rm"], max_length=8)
    text = "0123456789abcdef"
    long, short = scorer(["q:", "q:"], [text, "ok"])
    assert long == pytest.approx(scorer([""], [text[-8:]])[0], abs=1e-5)
    assert scorer.stats["truncated"] == 1
    result = scorer.detailed(["q:", "q:"], [text, "ok"])
    assert result.details == [{"tokens": 18, "truncatedTo": 8}, None]
    assert result.values == pytest.approx([long, short], abs=1e-5)
    # Leading special tokens survive the cut (a decoder's BOS, an encoder's CLS).
    assert scorer([""], ["<eos>0123456789"]) == pytest.approx(scorer([""], ["<eos>3456789"]), abs=1e-5)
    assert scorer.detailed([""], ["<eos>0123456789"]).details == [{"tokens": 11, "truncatedTo": 8}]
    # An empty text is no judgement, not a crash.
    assert scorer([""], [""]) == [None] and scorer.stats["empty"] == 1


def test_combined_with_normalisation_and_pickled(reward_models: dict[str, Path]) -> None:
    scorer = build_scorer(
        {"type": "reward_model", "model": str(reward_models["rm"]), "normalization": "sigmoid"}
    )
    assert isinstance(scorer, RewardModelScorer)
    batch = score_all([scorer], PROMPTS, COMPLETIONS)
    logits = batch.raw["reward_model"]
    assert batch.per_scorer["reward_model"] == pytest.approx([1 / (1 + math.exp(-v)) for v in logits])
    copy = pickle.loads(pickle.dumps(scorer))  # carries the spec, not the loaded model
    assert copy._model is None and copy.spec == scorer.spec
    assert copy(PROMPTS, COMPLETIONS) == pytest.approx(logits, abs=1e-5)


def test_float32_head_under_bfloat16(reward_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU path, on the CPU: bfloat16 body, float32 head; close to the float32 values.
    import torch

    reference = scorer_for(reward_models["rm"])(PROMPTS, COMPLETIONS)
    monkeypatch.setattr(RewardModelScorer, "_dtype", lambda self, device: torch.bfloat16)
    scorer = scorer_for(reward_models["rm"])
    values = scorer(PROMPTS, COMPLETIONS)
    assert scorer._model.score.weight.dtype == torch.float32
    assert scorer._model.transformer.h[0].attn.c_attn.weight.dtype == torch.bfloat16
    assert values == pytest.approx(reference, abs=0.1)


def test_refuses_what_is_not_a_reward_model(reward_models: dict[str, Path]) -> None:
    with pytest.raises(ScorerError, match="reward model"):
        scorer_for(reward_models["lm"])(["q"], ["a"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ScorerError, match="no GPU"):
            scorer_for(reward_models["rm"], device="cuda")(["q"], ["a"])


def test_loads_from_s3(
    reward_models: dict[str, Path], s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAO_CACHE_DIR", str(tmp_path / "cache"))
    storage.upload_dir(reward_models["rm"], f"s3://{s3_bucket}/models/rm")
    remote = scorer_for(f"s3://{s3_bucket}/models/rm")(PROMPTS, COMPLETIONS)
    assert remote == pytest.approx(scorer_for(reward_models["rm"])(PROMPTS, COMPLETIONS), abs=1e-6)


def test_score_stage_writes_raw_details_and_counters(reward_models: dict[str, Path], tmp_path: Path) -> None:
    from tao_trainer.contract import StageConfig
    from tao_trainer.layout import RunLayout
    from tao_trainer.spec import LoopSpec
    from tao_trainer.stages.score import run_score

    spec = LoopSpec.model_validate(
        {
            "model": {"uri": reward_models["lm"].as_uri()},
            "prompts": {"uri": (tmp_path / "prompts.jsonl").as_uri()},
            "storage": {"uri": (tmp_path / "runs").as_uri()},
            "generation": {"candidates": 3, "shards": 1},
            "scoring": {
                "scorers": [
                    {
                        "type": "regex",
                        "pattern": r"\d",
                        "mode": "search",
                        "require": True,
                        "weight": 0,
                        "name": "digit",
                    },
                    {
                        "type": "reward_model",
                        "model": str(reward_models["rm"]),
                        "normalization": "group_zscore",
                        "maxLength": 12,
                    },
                ]
            },
        }
    )
    cfg = StageConfig(
        stage="score",
        round=1,
        run_uri=(tmp_path / "runs" / "r").as_uri(),
        model_uri=spec.model.uri,
        spec=spec,
    )
    lay = RunLayout(cfg.run_uri)
    records = [
        {"id": "a", "prompt": "1+1=", "fields": {}, "candidates": ["2", "two", "it is 2, surely, as always"]},
        {"id": "b", "prompt": "2+2=", "fields": {}, "candidates": ["4", "4", "4"]},
    ]
    storage.write_jsonl(lay.shard("candidates", 1, 0), records)
    result = run_score(cfg)
    a, b = storage.read_jsonl(lay.shard("scores", 1, 0))
    assert a["scores"][1] == 0.0  # no digit: gated out whatever the reward model says
    assert set(a["perScorer"]) == {"digit", "reward_model"} and set(a["raw"]) == {"reward_model"}
    raw = a["raw"]["reward_model"]
    mean = sum(raw) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in raw) / 3)
    assert a["perScorer"]["reward_model"] == pytest.approx([(v - mean) / std for v in raw])
    assert a["scores"] == pytest.approx([(raw[0] - mean) / std, 0.0, (raw[2] - mean) / std])
    assert a["details"] == {"reward_model": [None, None, {"tokens": 30, "truncatedTo": 12}]}
    assert "details" not in b and b["scores"] == [0.0, 0.0, 0.0]  # equal candidates: z-score 0
    assert result.counts["reward_model.texts"] == 6 and result.counts["reward_model.truncated"] == 1
    assert len(result.model_dump_json()) < 4096
