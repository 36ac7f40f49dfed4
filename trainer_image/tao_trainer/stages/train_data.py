"""The train stage's datasets: what each method trains on, built from the round's files.

- sft: a prompt's candidates at or above `sft.minScore` (best first, `topK` at most), as token ids;
- dpo: the best and the worst candidate of a prompt, when their scores differ by `dpo.minMargin`;
- grpo: the round's prompts, each with the generated candidates its group scorers vote on (`grpo.votes`).

Every row carries the prompt exactly as generation and evaluation prepared it (token parity).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tao_trainer import storage
from tao_trainer.contract import CANDIDATE_FIELDS, CANDIDATE_SOURCES, StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.scorers.combine import VOTES_COLUMN
from tao_trainer.spec import LoopSpec, TrainingSpec
from tao_trainer.stages.common import log, my_shards, prepare


def scored_candidates(
    lay: RunLayout, round_: int, shards: list[int]
) -> Iterator[tuple[dict[str, Any], list[float | None]]]:
    """(candidates record, its scores) for every prompt of the round."""
    for i in shards:
        records = storage.read_jsonl(lay.shard("candidates", round_, i))
        scores = {row["id"]: row["scores"] for row in storage.read_jsonl(lay.shard("scores", round_, i))}
        for rec in records:
            yield rec, scores[rec["id"]]


def sft_examples(rec: dict[str, Any], scores: list[float | None], spec: TrainingSpec) -> list[dict[str, str]]:
    """A prompt's best candidates at or above the threshold; None scores never qualify.

    >>> spec = TrainingSpec.model_validate({"sft": {"minScore": 0.5, "topK": 2}})
    >>> sft_examples({"candidates": ["a", "b", "c", "d"]}, [0.9, None, 1.0, 0.2], spec)
    [{'completion': 'c'}, {'completion': 'a'}]
    """
    ranked = sorted(
        (i for i, s in enumerate(scores) if s is not None and s >= spec.sft.min_score),
        key=lambda i: -scores[i],  # type: ignore[operator]
    )
    picked, seen = [], set()
    for i in ranked:
        text = rec["candidates"][i]
        if spec.sft.dedupe and text in seen:
            continue
        seen.add(text)
        picked.append({"completion": text} | ({"source": rec["sources"][i]} if "sources" in rec else {}))
        if spec.sft.top_k is not None and len(picked) >= spec.sft.top_k:
            break
    return picked


def dpo_pair(rec: dict[str, Any], scores: list[float | None], spec: TrainingSpec) -> dict[str, str] | None:
    """Best vs worst candidate, if their scores differ by at least the margin and the texts differ.

    >>> spec = TrainingSpec.model_validate({"dpo": {"minMargin": 0.5}})
    >>> dpo_pair({"candidates": ["a", "b", "c"]}, [0.2, 1.0, None], spec)
    {'chosen': 'b', 'rejected': 'a'}
    >>> dpo_pair({"candidates": ["a", "b"]}, [0.7, 1.0], spec) is None
    True
    """
    valued = [(s, i) for i, s in enumerate(scores) if s is not None]
    if len(valued) < 2:
        return None
    best, worst = max(valued), min(valued)
    if best[0] - worst[0] < spec.dpo.min_margin:
        return None
    chosen, rejected = rec["candidates"][best[1]], rec["candidates"][worst[1]]
    return None if chosen == rejected else {"chosen": chosen, "rejected": rejected}


def source_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Kept examples by who wrote them (distillation: the teacher or the model; DPO counts the chosen answer).

    >>> source_counts([{"source": "teacher"}, {"source": "teacher"}, {"source": "model"}])
    {'examplesFromTeacher': 2, 'examplesFromModel': 1}
    >>> source_counts([{"completion": "a"}])
    {}
    """
    if not any("source" in row for row in rows):
        return {}
    return {
        f"examplesFrom{s.title()}": sum(row.get("source") == s for row in rows) for s in CANDIDATE_SOURCES
    }


def build_dataset(cfg: StageConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """The round's training rows, each prompt prepared exactly as generation and evaluation prepared it.

    Every row carries `prompt_ids` (the tokens the model read when it wrote the candidates) and `prompt` in the
    form TRL tokenizes to those same tokens: the chat messages when the model has a chat template (TRL applies the
    template with a generation prompt, without adding special tokens), else the plain text (TRL adds the
    tokenizer's leading special tokens, as we do). `dataset.jsonl` keeps these rows, so what a round trained on
    can be read back.
    """
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    system = spec.generation.system_prompt
    rows: list[dict[str, Any]] = []
    if spec.training.method == "grpo":
        records, votes = _grpo_prompts(lay, r, my_shards(cfg), spec.grpo_votes_on_candidates())
        for k, (rec, prepared) in enumerate(zip(records, prepare(tokenizer, records, system), strict=True)):
            row = {**rec.get("fields", {}), **_trl_prompt(prepared)}
            if votes is not None:
                row[VOTES_COLUMN] = votes[k]
            rows.append(row)
        return rows
    scored = list(scored_candidates(lay, r, my_shards(cfg)))
    prepared_prompts = prepare(tokenizer, [rec for rec, _ in scored], system)
    for (rec, scores), prepared in zip(scored, prepared_prompts, strict=True):
        if spec.training.method == "sft":
            rows.extend(
                {"prompt": prepared.text, "prompt_ids": prepared.ids, **ex}
                for ex in sft_examples(rec, scores, spec.training)
            )
        else:
            pair = dpo_pair(rec, scores, spec.training)
            if pair is not None:
                # A chat prompt's answers are assistant turns: TRL renders them with the template's turn ends.
                answers: dict[str, Any] = (
                    {k: [{"role": "assistant", "content": v}] for k, v in pair.items()}
                    if prepared.chat
                    else pair
                )
                chosen_source = (
                    {"source": rec["sources"][rec["candidates"].index(pair["chosen"])]}
                    if "sources" in rec
                    else {}
                )
                rows.append({**_trl_prompt(prepared), **answers, **chosen_source})
    return rows


def no_examples_error(spec: LoopSpec, round_: int) -> str:
    """Why a round has no training example, and what to change."""
    if spec.training.method == "grpo":
        return (
            f"round {round_}: no prompt to train on: none has a candidate for GRPO's group scorers to vote on "
            "(training.grpo.votes: candidates); the generate stage's candidatesMissing says how many failed "
            "(a teacher endpoint's errors are in its log); fix the generator, or set training.grpo.votes: group"
        )
    return (
        f"round {round_}: no training example: no candidate reached training.sft.minScore "
        f"({spec.training.sft.min_score}) / no pair reached training.dpo.minMargin; check the scorers "
        "(their per-scorer values are in the scores shards) or lower the threshold"
    )


def _grpo_prompts(
    lay: RunLayout, round_: int, shards: list[int], on_candidates: bool
) -> tuple[list[dict[str, Any]], list[list[Any]] | None]:
    """GRPO's prompt records and, with `training.grpo.votes: candidates`, each one's candidates from the generate
    stage, which its group scorers judge every completion against.

    Votes are read from the candidates rows, which are the prompt records with their candidates added, so a
    prompt and its votes cannot be mismatched. A prompt left without any candidate (every one of a teacher's
    requests failed) has nothing to be voted against and is left out of the round's training; the log says how many.
    """
    if not on_candidates:
        return [rec for i in shards for rec in storage.read_jsonl(lay.shard("prompts", round_, i))], None
    rows = [row for i in shards for row in storage.read_jsonl(lay.shard("candidates", round_, i))]
    voted = [row for row in rows if row.get("candidates")]
    if len(voted) < len(rows):
        log(
            f"train: {len(rows) - len(voted)} of {len(rows)} prompt(s) have no candidates to vote on "
            "(see the generate stage's candidatesMissing); GRPO leaves them out of this round"
        )
    records = [{k: v for k, v in row.items() if k not in CANDIDATE_FIELDS} for row in voted]
    return records, [row["candidates"] for row in voted]


def _trl_prompt(prepared: Any) -> dict[str, Any]:
    """The prompt as TRL takes it (messages for a chat template, else text) and the ids it must come to."""
    row = {"prompt": prepared.messages if prepared.chat else prepared.text, "prompt_ids": prepared.ids}
    return row | ({"tools": prepared.tools} if prepared.tools else {})  # DPO renders a row's tools as we do


def sft_tokens(row: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    """An SFT row as token ids for TRL (which then tokenizes nothing itself): the prompt's own ids, then the
    completion's, then EOS so that the model learns to stop; only the completion and EOS are trained on."""
    completion = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        completion.append(tokenizer.eos_token_id)
    prompt = list(row["prompt_ids"])
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


def check_trl_prompt_ids(tokenizer: Any, row: dict[str, Any]) -> None:
    """Fail before training when TRL would tokenize a plain-text prompt differently from generation.

    TRL tokenizes a plain-text prompt with the tokenizer's defaults; a tokenizer that appends a special token
    (EOS) to every text would make GRPO sample from prompts that end in it. Chat prompts are tokenized by the chat
    template without added special tokens, as generation does.
    """
    if row.get("tools"):
        raise ValueError(
            "training.method grpo: prompts carry `tools`, and TRL's GRPOTrainer renders every prompt without a "
            "record's tools, so it would train on other tokens than generation saw; use sft or dpo"
        )
    if isinstance(row["prompt"], str):
        trl_ids = list(tokenizer(text=row["prompt"])["input_ids"])
        if trl_ids != row["prompt_ids"]:
            raise ValueError(
                "training.method grpo: TRL would read this model's plain-text prompts as other tokens than "
                f"generation does ({trl_ids[-3:]} vs {row['prompt_ids'][-3:]} at the end): the tokenizer appends "
                "special tokens to every text. Give the model a chat template, or use sft or dpo"
            )
