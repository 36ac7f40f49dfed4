"""A learned reward model: one logit per (prompt, completion), from an HF sequence-classification model.

The value is the raw logit, on whatever scale the model was trained to; pick `normalization: sigmoid`
(a Bradley-Terry model's logit as a probability) or `group_zscore` (rank within a prompt's candidates)
to put it beside 0..1 scorers. torch and transformers are imported when the model is first needed, so
building the scorer (and validating specs in the operator) costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tao_trainer.spec import RewardModelSpec

from .base import Detail, Detailed, Score, Scorer, ScorerError, completion_text

__all__ = ["RewardModelScorer", "reward_model_messages"]


def _as_messages(turn: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(turn, str):
        return [{"role": role, "content": turn}]
    if isinstance(turn, Sequence) and all(isinstance(m, Mapping) for m in turn):
        return [dict(m) for m in turn]
    raise TypeError(f"a {role} turn must be a string or a list of chat messages, not {type(turn).__name__}")


def reward_model_messages(prompt: Any, completion: Any) -> list[dict[str, Any]]:
    """The conversation a chat reward model reads: the prompt as the user turn(s), the completion as the
    assistant turn(s). Conversational prompts and completions (lists of messages) are kept as they are.

    >>> reward_model_messages("2+2?", "4")
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
    """
    return _as_messages(prompt, "user") + _as_messages(completion, "assistant")


def _plain_text(prompt: Any, completion: Any) -> str:
    # Without a chat template the completion continues the prompt, as it did when it was generated.
    if isinstance(prompt, str):
        head = prompt
    else:
        head = "\n".join(completion_text([message]) for message in _as_messages(prompt, "user"))
    return head + completion_text(completion)


class RewardModelScorer(Scorer[RewardModelSpec]):
    """Scores each candidate with a sequence-classification reward model (`num_labels=1`).

    The model input is the tokenizer's chat template applied to [user prompt, assistant completion]
    when the tokenizer has one, else the prompt followed by the completion. Inputs longer than
    `maxLength` tokens (or than the model's position table) lose their beginning, after any leading
    special tokens (BOS, CLS): a decoder reward model reads its score at the last token, so the end of
    the completion is what must stay. The scores file's details name the truncated candidates and the
    `truncated` counter counts them. Candidates are batched `batchSize` at a time, longest first (less
    padding), padded on the right so that a value does not depend on its batch; an empty input scores
    None. On a GPU the model runs in bfloat16 with its classification head in float32, so that close
    candidates are still told apart; on a CPU everything is float32.

    The model is loaded on the first call, once per scorer; a pickled scorer carries only its spec and
    loads its own copy where it is unpickled.

    Counters (`stats`, reported in the stage result as `<name>.<counter>`): `texts`, `batches`,
    `truncated`, `empty`.
    """

    spec_model = RewardModelSpec
    scorer_type = "reward_model"

    def __init__(self, spec: RewardModelSpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        self._model: Any = None
        self._tokenizer: Any = None
        self._device: str | None = None

    # ------------------------------------------------------------------------------------------ loading

    def _pick_device(self) -> str:
        import torch

        wanted = self.spec.device
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ScorerError(f"scorer {self.name!r}: device 'cuda' was asked for but no GPU is visible")
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return wanted

    def _dtype(self, device: str) -> Any:
        import torch

        return torch.bfloat16 if device == "cuda" else torch.float32

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification

        from tao_trainer import models

        where = f"scorer {self.name!r}: reward model {self.spec.model!r}"
        path = models.resolve(self.spec.model)
        device = self._pick_device()
        dtype = self._dtype(device)
        tokenizer = models.load_tokenizer(path)  # pad token falls back to eos there
        if tokenizer.pad_token_id is None:
            raise ScorerError(f"{where}: the tokenizer has neither a pad nor an eos token")
        tokenizer.padding_side = "right"
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=dtype, output_loading_info=True
            )
        except (OSError, ValueError) as exc:
            raise ScorerError(f"{where}: not loadable as a sequence-classification model: {exc}") from exc
        if model.config.num_labels != 1:
            raise ScorerError(
                f"{where}: has {model.config.num_labels} labels; a reward model has one (num_labels=1)"
            )
        if info.get("missing_keys"):
            # A plain causal LM loads "fine" with a freshly initialised head: random scores. Refuse.
            missing = sorted(info["missing_keys"])
            raise ScorerError(
                f"{where}: weights missing from the checkpoint ({', '.join(missing[:4])}"
                f"{', ...' if len(missing) > 4 else ''}); is it a trained reward model?"
            )
        # The model finds each row's last real token by comparing ids with the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
        if dtype != torch.float32:
            _float32_head(model)
        model.to(device)
        model.eval()
        self._model, self._tokenizer, self._device = model, tokenizer, device

    # ------------------------------------------------------------------------------------------ scoring

    def _texts(self, prompts: Sequence[Any], completions: Sequence[Any]) -> tuple[list[str], bool]:
        """The model inputs as text, and whether they came from the chat template."""
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            texts = [
                tokenizer.apply_chat_template(reward_model_messages(p, c), tokenize=False)
                for p, c in zip(prompts, completions, strict=True)
            ]
            return texts, True
        return [_plain_text(p, c) for p, c in zip(prompts, completions, strict=True)], False

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        if not completions:
            return Detailed([])
        import torch

        self._load()
        texts, templated = self._texts(prompts, completions)
        # A chat template writes the special tokens itself (BOS included): adding them again doubles them.
        encoded = self._tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        # A model cannot read past its position table, whatever maxLength says.
        positions = getattr(self._model.config, "max_position_embeddings", None)
        limit = min(self.spec.max_length, positions) if positions else self.spec.max_length
        special = set(self._tokenizer.all_special_ids)
        ids: list[list[int]] = []
        details: list[Detail] = [None] * len(texts)
        for index, row in enumerate(encoded):
            if len(row) > limit:
                details[index] = {"tokens": len(row), "truncatedTo": limit}
                # Leading special tokens (BOS, an encoder's CLS) stay: models read them as the start.
                head = 0
                while head < limit // 2 and row[head] in special:
                    head += 1
                row = row[:head] + row[len(row) - (limit - head) :]
            ids.append(list(row))
        self.count("texts", len(ids))
        self.count("truncated", sum(d is not None for d in details))

        values: list[Score] = [None] * len(ids)
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: -len(ids[i]))
        self.count("empty", len(ids) - len(order))
        size = self.spec.batch_size
        with torch.inference_mode():
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                rows = [ids[i] for i in chunk]
                input_ids, attention_mask = _right_padded(rows, self._tokenizer.pad_token_id)
                logits = self._model(
                    input_ids=input_ids.to(self._device), attention_mask=attention_mask.to(self._device)
                ).logits
                for i, value in zip(chunk, logits[:, 0].float().cpu().tolist(), strict=True):
                    values[i] = value
                self.count("batches")
        return Detailed(values, details if any(d is not None for d in details) else None)


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) tensors, padded on the right to the longest row."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[r, : len(row)] = 1
    return input_ids, attention_mask


def _float32_head(model: Any) -> None:
    """Run the classification head in float32: in bfloat16 a logit near 8 moves in steps of 1/16,
    enough to tie candidates that the model tells apart."""
    import torch

    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module):
        return
    head.float()

    def to_float32(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    head.register_forward_pre_hook(to_float32)
