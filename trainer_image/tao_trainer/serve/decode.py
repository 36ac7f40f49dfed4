"""One batch of `tao serve` requests decoded together: every choice of every request is a row of one forward
pass per token (left-padded, with a KV cache), sampled with its own request's temperature, top_p and seed.

A request's rows draw from the request's own random generator, in a fixed order, so a seeded request gives
the same text whichever requests it shares a batch with. Each token is reported to its request as an event
as soon as it is sampled, which is what streaming sends; text that could still turn out to be the start of a
stop string is held back until it cannot.
"""

from __future__ import annotations

import queue
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tao_trainer.serve.request import RequestError, Sampling

if TYPE_CHECKING:
    from tao_trainer.serve.backend import TransformersBackend

__all__ = ["Delta", "Done", "Failed", "Finish", "Job", "TokenLogprob", "decode"]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Delta:
    """New text of choice `index` (possibly empty) and, with logprobs asked for, the token that made it."""

    index: int
    text: str
    logprob: TokenLogprob | None


@dataclass(frozen=True)
class Finish:
    index: int
    reason: str  # "stop" (end of sequence or a stop string) or "length"
    completion_tokens: int


@dataclass(frozen=True)
class Done:
    """Every choice of the request has finished."""


@dataclass(frozen=True)
class Failed:
    error: RequestError


Event = Delta | Finish | Done | Failed


@dataclass
class Job:
    """One request: its prompts' token ids, each with its completion length; choice i*n+j is sample j of prompt i."""

    prompts: list[list[int]]
    max_tokens: list[int]
    sampling: Sampling
    adapter: str | None = None
    events: queue.Queue[Event] = field(default_factory=queue.Queue)
    cancelled: bool = False
    prompt_tokens: int = 0

    def __post_init__(self) -> None:
        self.prompt_tokens = sum(len(p) for p in self.prompts)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.sampling.n


@dataclass
class _Row:
    job: Job
    index: int
    max_tokens: int
    out: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already reported
    done: bool = False


def decode(backend: TransformersBackend, jobs: list[Job]) -> int:
    """Generate every choice of `jobs` (one adapter) in one batch; returns the number of forward passes."""
    import torch

    rows = [
        _Row(job, i * job.sampling.n + j, job.max_tokens[i])
        for job in jobs
        for i in range(len(job.prompts))
        for j in range(job.sampling.n)
    ]
    prompts = [job.prompts[i] for job in jobs for i in range(len(job.prompts)) for _ in range(job.sampling.n)]
    generators = {}
    for job in jobs:
        seed = job.sampling.seed if job.sampling.seed is not None else random.getrandbits(62)
        generators[id(job)] = torch.Generator().manual_seed(seed)
    remaining = {id(job): job.rows for job in jobs}
    device = backend.model.device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[backend.pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    past: Any = None
    cache_arg = _cache_arg(backend.model)
    steps = 0
    with torch.inference_mode(), backend.forward_context(jobs[0].adapter):
        while True:
            out = backend.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **({cache_arg: past} if past is not None else {}),
            )
            steps += 1
            past = getattr(out, cache_arg)
            logprobs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            chosen = []
            for r, row in enumerate(rows):
                if row.done or row.job.cancelled:
                    if not row.done:
                        row.done = True
                        remaining[id(row.job)] -= 1
                    chosen.append(backend.pad_id)
                    continue
                token = _sample(logprobs[r], row.job.sampling, generators[id(row.job)])
                chosen.append(token)
                if _advance(backend, row, token, logprobs[r]):
                    remaining[id(row.job)] -= 1
                    if remaining[id(row.job)] == 0:
                        row.job.events.put(Done())
            if all(row.done for row in rows):
                return steps
            ids = torch.tensor(chosen, device=device).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
            positions = positions[:, -1:] + 1


def _cache_arg(model: Any) -> str:
    """The KV cache's name in forward's arguments and outputs: `cache` (transformers >= 5.2x), else
    `past_key_values`."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _sample(logprobs: Any, sampling: Sampling, generator: Any) -> int:
    import torch

    if sampling.temperature <= 0.0:
        return int(logprobs.argmax())
    probs = torch.softmax(logprobs / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p  # the smallest set reaching top_p
        sorted_probs = sorted_probs * keep
        return int(order[torch.multinomial(sorted_probs.cpu(), 1, generator=generator)])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _advance(backend: TransformersBackend, row: _Row, token: int, logprobs: Any) -> bool:
    """Record one sampled token, report what it makes visible; True once the row has finished."""
    sampling = row.job.sampling
    row.out.append(token)
    entry = None
    if sampling.logprobs is not None:
        top: tuple[tuple[str, float], ...] = ()
        if sampling.logprobs:
            values, indices = logprobs.topk(sampling.logprobs)
            top = tuple((backend.token_text(int(i)), float(v)) for v, i in zip(values, indices, strict=True))
        entry = TokenLogprob(backend.token_text(token), float(logprobs[token]), top)
    ended = token in backend.eos_ids
    text = backend.text(row.out)
    reason = None
    end = len(text)
    cuts = [pos for pos in (text.find(s) for s in sampling.stop) if pos >= 0]
    if cuts:
        end, reason = min(cuts), "stop"
    elif ended:
        reason = "stop"
    elif len(row.out) >= row.max_tokens:
        reason = "length"
    else:
        if sampling.stop:  # hold back what could still be the start of a stop string
            end -= max(len(s) for s in sampling.stop) - 1
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            end -= 1
    delta = text[row.sent : end] if end > row.sent else ""
    row.sent = max(row.sent, end)
    if delta or entry is not None:
        row.job.events.put(Delta(row.index, delta, entry))
    if reason is None:
        return False
    row.done = True
    row.job.events.put(Finish(row.index, reason, len(row.out)))
    return True
