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
from tao_trainer.contract import StageConfig, StageResult
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


def finished_part(uri: str, prompts: list[dict[str, Any]], candidates: int) -> list[dict[str, Any]] | None:
    """The part at `uri` if it holds exactly these prompts with `candidates` each; else None (none yet, or one
    left by a run with another partSize or candidates setting, which is sampled again)."""
    if not storage.exists(uri):
        return None
    rows = storage.read_jsonl(uri)
    same = len(rows) == len(prompts) and all(
        {k: v for k, v in row.items() if k != "candidates"} == rec
        and len(row.get("candidates", ())) == candidates
        for row, rec in zip(rows, prompts, strict=True)
    )
    return rows if same else None


def run_generate(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    gen_spec = spec.generation
    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("candidates", r, i))]
    source, revision = candidate_source(gen_spec, cfg.model_uri)
    sampled = reused = 0
    if todo:
        generator = None  # loaded on the first part to sample: a shard whose parts all exist needs no model
        shard_records = {i: storage.read_jsonl(lay.shard("prompts", r, i)) for i in todo}
        bar = progress_bar(sum(len(v) for v in shard_records.values()), f"round {r} generate")
        for i in todo:
            records, size = shard_records[i], gen_spec.part_size
            parts: list[list[dict[str, Any]]] = []
            for p, start in enumerate(range(0, len(records), size)):
                chunk, uri = records[start : start + size], lay.shard_part(r, i, p)
                rows = finished_part(uri, chunk, gen_spec.candidates)
                if rows is not None:
                    reused += len(chunk)
                    bar.update(len(chunk))
                else:
                    if generator is None:
                        generator = open_generator(gen_spec, source, revision, candidate_engine(gen_spec))
                    seed = shard_seed(gen_spec.seed, r, i)
                    sampling = Sampling.from_spec(gen_spec, seed=seed, first_index=start)
                    outs = generator.generate(
                        render(generator, chunk, gen_spec.system_prompt), sampling, progress=bar.update
                    )
                    rows = [{**rec, "candidates": cands} for rec, cands in zip(chunk, outs, strict=True)]
                    storage.write_jsonl(uri, rows)
                    sampled += len(chunk)
                parts.append(rows)
            storage.write_jsonl(lay.shard("candidates", r, i), (row for part in parts for row in part))
            for p in range(len(parts)):  # the whole shard holds them all now
                storage.delete(lay.shard_part(r, i, p))
        bar.close()
    n_prompts = sum(len(storage.read_jsonl(lay.shard("candidates", r, i))) for i in shards)
    return StageResult(
        stage="generate",
        round=r,
        counts={
            "prompts": n_prompts,
            "candidates": n_prompts * gen_spec.candidates,
            "shardsDone": len(todo),
            "shardsSkipped": len(shards) - len(todo),
            "promptsSampled": sampled,
            "promptsFromParts": reused,
        },
        outputs={"candidates": f"{lay.round_dir(r)}/candidates/", "generator": source},
    )
