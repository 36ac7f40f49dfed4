"""A teacher behind an OpenAI-compatible endpoint (`generation.teacher.endpoint`): candidates for curated
distillation from a hosted model, a gateway, an in-cluster vLLM or `tao serve`.

Each prompt is one request for its `n` candidates (`n` in the body; a server that returns fewer is asked again),
`endpoint.concurrency` at a time under the endpoint's rate limits, with the client's retries (`Retry-After`
honoured). Answers are kept in the run's storage (`answer_cache`) before the part that holds them is written,
so a retried or resumed stage pays for no request twice. A prompt the teacher cannot answer (a failed request,
refused or empty choices) gets fewer candidates and a `missing` count: counted, never fatal for the stage.
The API key is read from `endpoint.apiKeyEnv` and never appears in errors, logs or artifacts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tao_trainer import models
from tao_trainer.answer_cache import AnswerCache, request_key
from tao_trainer.generation import Sampling
from tao_trainer.openai_client import OpenAIClient, RequestFailed
from tao_trainer.spec import ServedModelSpec, TeacherSpec

log = logging.getLogger(__name__)

_WARNINGS = 3  # failures logged at WARNING; the rest only counted


@dataclass
class Answer:
    """A prompt's candidates from the teacher, how many of the `n` asked for it could not give, and the tokens
    its requests took (as the server reported them; kept with a cached answer, for cost per success)."""

    texts: list[str]
    missing: int
    input_tokens: int = 0
    output_tokens: int = 0


class EndpointSampler:
    """Candidates from an endpoint (`teacher.endpoint`, or `generation.modelEndpoint` for the model being tuned);
    `stats` counts calls, cacheHits, retries, httpErrors, refusals, parseFailures, promptTokens and
    completionTokens (tokens of requests made, not of cached answers)."""

    def __init__(
        self,
        teacher: TeacherSpec | ServedModelSpec,
        cache: AnswerCache,
        system_prompt: str | None,
        key_salt: str = "",
        field: str = "generation.teacher.endpoint",
    ) -> None:
        """`teacher`: the teacher, or the model being tuned as a server serves it (`key_salt` then names the
        round's starting model, so that a later round's champion never reads an earlier model's answers)."""
        endpoint = teacher.endpoint
        if endpoint is None:
            raise ValueError(f"{field} is not set")
        self.api, self.endpoint, self.cache, self.system_prompt = teacher.api, endpoint, cache, system_prompt
        self.key_salt, self.field = key_salt, field
        key = None
        if endpoint.api_key_env is not None:
            key = os.environ.get(endpoint.api_key_env, "")
            if not key:
                raise ValueError(
                    f"{field}: the environment variable {endpoint.api_key_env} (apiKeyEnv) is not set or empty"
                )
        self._warned = 0
        self.client = OpenAIClient(endpoint, api_key=key, user_agent="tao-teacher", warn=self._warn)
        self.stats = self.client.stats
        self.stats["cacheHits"] = 0

    def _warn(self, message: str) -> None:
        self._warned += 1
        if self._warned <= _WARNINGS:
            log.warning("%s %s: %s", self.field, self.endpoint.url, message)

    def _prompt(self, record: dict[str, Any]) -> str | list[dict[str, Any]]:
        if self.api == "chat":
            return models.prompt_messages(record["prompt"], self.system_prompt)
        if not isinstance(record["prompt"], str):
            raise RequestFailed(
                f"a chat prompt cannot go to /completions ({self.field} with api: completions)"
            )
        return (self.system_prompt + "\n\n" if self.system_prompt else "") + record["prompt"]

    def _params(self, sampling: Sampling, index: int) -> dict[str, Any]:
        # Seeded by the prompt's place in its shard, as local sampling is: the same part asks the same requests.
        return {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": (sampling.seed + sampling.first_index + index) % 2**31,
        }

    def _answer(self, record: dict[str, Any], n: int, params: dict[str, Any]) -> Answer:
        try:
            prompt = self._prompt(record)
            route = "completions" if isinstance(prompt, str) else "chat/completions"
            body = {"model": self.endpoint.model, "prompt": prompt, "n": n, **params}
            key = request_key(
                self.endpoint.url, route, body | ({"served": self.key_salt} if self.key_salt else {})
            )
            cached = self.cache.get(key)
            if cached is not None:
                self.client.count("cacheHits", 1)
            else:
                sampled = self.client.sample(prompt, n, **params)
                cached = {
                    "texts": sampled.texts,
                    "input": sampled.input_tokens,
                    "output": sampled.output_tokens,
                }
                self.cache.put(key, cached)
        except RequestFailed as failure:
            self.client.count("failedPrompts", 1)
            self._warn(f"prompt {record.get('id')!r}: {failure.message}")
            return Answer([], n)
        texts = list(cached["texts"])[:n]
        return Answer(texts, n - len(texts), int(cached.get("input", 0)), int(cached.get("output", 0)))

    def sample(
        self,
        records: Sequence[dict[str, Any]],
        n: int,
        sampling: Sampling,
        progress: Callable[[int], None] | None = None,
    ) -> list[Answer]:
        """`n` candidates for each record (fewer where the teacher could not give them), in order."""
        workers = min(self.endpoint.concurrency, max(len(records), 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher") as pool:
            futures = [
                pool.submit(self._answer, rec, n, self._params(sampling, i)) for i, rec in enumerate(records)
            ]
            answers = []
            for future in futures:
                answers.append(future.result())
                if progress is not None:
                    progress(1)
        self.cache.flush()  # before the part holding these answers is written
        return answers
