"""Stage `generate`: prompt shards -> candidates, N per prompt, from the model (or the teacher).

A shard's progress is saved as parts of `generation.partSize` prompts (`RunLayout.shard_part`), and the shard
itself is written once, whole, from its parts; only a whole shard counts as complete. A stage run again skips
the shards that exist and, within a shard, the parts that exist, so a preempted or evicted pod loses at most
the part it was writing. A part draws, batch by batch, the random numbers the whole shard would (the
transformers backend seeds each batch by its place in the shard; vLLM seeds each request): a part sampled again
is sampled as it was the first time, and with a partSize that is a multiple of batchSize the candidates are
those of the shard sampled in one go.
"""

from __future__ import annotations

from typing import Any

from tao_trainer import storage
from tao_trainer.answer_cache import AnswerCache
from tao_trainer.contract import CANDIDATE_FIELDS, CANDIDATE_SOURCES, StageConfig, StageResult
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import (
    candidate_engine,
    candidate_source,
    my_shards,
    open_generator,
    progress_bar,
    render,
    shard_seed,
)
from tao_trainer.teacher import Answer, EndpointSampler


def finished_part(uri: str, prompts: list[dict[str, Any]], candidates: int) -> list[dict[str, Any]] | None:
    """The part at `uri` if it holds exactly these prompts with `candidates` each (counting the ones an endpoint
    teacher could not give as `missing`); else None (none yet, or one left by a run with another partSize or
    candidates setting, which is sampled again)."""
    if not storage.exists(uri):
        return None
    rows = storage.read_jsonl(uri)
    same = len(rows) == len(prompts) and all(
        {k: v for k, v in row.items() if k not in CANDIDATE_FIELDS} == rec
        and len(row.get("candidates", ())) + row.get("missing", 0) == candidates
        for row, rec in zip(rows, prompts, strict=True)
    )
    return rows if same else None


class CandidateWriters:
    """Who writes a part's candidates: the model being tuned, or a teacher (weights or an endpoint) for
    `teacher.candidates(N)` of them and the model for the rest. Each is loaded when first needed."""

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg, self.gen = cfg, cfg.spec.generation
        teacher = self.gen.teacher
        self.n_teacher = teacher.candidates(self.gen.candidates) if teacher is not None else 0
        self.n_model = self.gen.candidates - self.n_teacher
        self.sources = (self.n_teacher > 0) + (self.n_model > 0)  # who samples each prompt: 1 or 2
        self.bar: Any = None  # a progress bar counting each prompt once per source
        self._local: dict[str, Any] = {}
        self.endpoints: dict[str, EndpointSampler] = {}

    def _generator(self, source: str) -> Any:
        if source not in self._local:
            if source == "teacher":
                uri, revision = candidate_source(self.gen, self.cfg.model_uri)
                self._local[source] = open_generator(self.gen, uri, revision, candidate_engine(self.gen))
            else:
                self._local[source] = open_generator(self.gen, self.cfg.model_uri)
        return self._local[source]

    def _endpoint(self, source: str) -> EndpointSampler | None:
        """The server that writes `source`'s candidates (the teacher's endpoint, generation.modelEndpoint), if any."""
        served = self.gen.teacher if source == "teacher" else self.gen.model_endpoint
        if served is None or served.endpoint is None:
            return None
        if source not in self.endpoints:
            cache = AnswerCache(RunLayout(self.cfg.run_uri).answer_cache(source))
            # The model's answers are the round's starting model's: keyed by it, never reused by a later champion.
            salt, field = (
                ("", "generation.teacher.endpoint")
                if source == "teacher"
                else (self.cfg.model_uri, "generation.modelEndpoint")
            )
            self.endpoints[source] = EndpointSampler(served, cache, self.gen.system_prompt, salt, field)
        return self.endpoints[source]

    def _local_answers(self, source: str, chunk: list[dict[str, Any]], sampling: Sampling) -> list[Answer]:
        generator = self._generator(source)
        outs = generator.generate(render(generator, chunk, self.gen.system_prompt), sampling, self.bar.update)
        return [Answer(texts, 0) for texts in outs]

    def part(self, chunk: list[dict[str, Any]], start: int, seed: int) -> list[dict[str, Any]]:
        """The candidates rows of `chunk`, the prompts from `start` on in their shard."""
        by_source: dict[str, list[Answer]] = {}
        for source, n in (("teacher", self.n_teacher), ("model", self.n_model)):
            if n == 0:
                continue
            sampling = Sampling.from_spec(self.gen, seed, n=n, first_index=start)
            if (endpoint := self._endpoint(source)) is not None:
                by_source[source] = endpoint.sample(chunk, n, sampling, self.bar.update)
            else:
                by_source[source] = self._local_answers(source, chunk, sampling)
        if self.gen.teacher is None and self.gen.model_endpoint is None:  # the plain TAO loop, rows as always
            return [{**rec, "candidates": a.texts} for rec, a in zip(chunk, by_source["model"], strict=True)]
        rows = []
        for i, rec in enumerate(chunk):
            texts = [text for source in by_source for text in by_source[source][i].texts]
            sources = [source for source in by_source for _ in by_source[source][i].texts]
            missing = sum(answers[i].missing for answers in by_source.values())
            rows.append(
                {**rec, "candidates": texts, "sources": sources} | ({"missing": missing} if missing else {})
            )
        return rows

    def counts(self, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Candidates of `rows` (the stage's shards) by source, and the endpoint teacher's counters
        (`teacher.<counter>`: this process's requests), for the result."""
        if self.gen.teacher is None and self.gen.model_endpoint is None:
            return {}
        out = {
            f"candidatesFrom{source.title()}": sum(row.get("sources", []).count(source) for row in rows)
            for source in CANDIDATE_SOURCES
        }
        out["candidatesMissing"] = sum(row.get("missing", 0) for row in rows)
        for source, endpoint in self.endpoints.items():  # `teacher.*`, `model.*`: their tokens are use
            out |= {f"{source}.{k}": v for k, v in endpoint.stats.items()}
        return out


def run_generate(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    gen_spec = spec.generation
    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("candidates", r, i))]
    sampled = reused = 0
    writers = CandidateWriters(cfg)  # loads nothing until a part needs sampling
    if todo:
        shard_records = {i: storage.read_jsonl(lay.shard("prompts", r, i)) for i in todo}
        total = writers.sources * sum(len(v) for v in shard_records.values())
        bar = writers.bar = progress_bar(total, f"round {r} generate")
        for i in todo:
            records, size = shard_records[i], gen_spec.part_size
            parts: list[list[dict[str, Any]]] = []
            for p, start in enumerate(range(0, len(records), size)):
                chunk, uri = records[start : start + size], lay.shard_part(r, i, p)
                rows = finished_part(uri, chunk, gen_spec.candidates)
                if rows is not None:
                    reused += len(chunk)
                    bar.update(writers.sources * len(chunk))
                else:
                    rows = writers.part(chunk, start, shard_seed(gen_spec.seed, r, i))
                    storage.write_jsonl(uri, rows)
                    sampled += len(chunk)
                parts.append(rows)
            storage.write_jsonl(lay.shard("candidates", r, i), (row for part in parts for row in part))
            for p in range(len(parts)):  # the whole shard holds them all now
                storage.delete(lay.shard_part(r, i, p))
        bar.close()
    rows = [row for i in shards for row in storage.read_jsonl(lay.shard("candidates", r, i))]
    teacher = gen_spec.teacher
    served = teacher if teacher is not None else gen_spec.model_endpoint
    generator = (
        f"{served.endpoint.url} ({served.endpoint.model})"
        if served is not None and served.endpoint is not None
        else candidate_source(gen_spec, cfg.model_uri)[0]
    )
    return StageResult(
        stage="generate",
        round=r,
        counts={
            "prompts": len(rows),
            "candidates": sum(len(row["candidates"]) for row in rows),
            "shardsDone": len(todo),
            "shardsSkipped": len(shards) - len(todo),
            "promptsSampled": sampled,
            "promptsFromParts": reused,
        }
        | writers.counts(rows),
        outputs={"candidates": f"{lay.round_dir(r)}/candidates/", "generator": generator},
    )
