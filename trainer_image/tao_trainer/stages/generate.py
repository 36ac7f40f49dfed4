"""Stage `generate`: prompt shards -> candidates, N per prompt, from the model (or the teacher).

A shard is written once, whole; a stage run again skips the shards that already exist, so an interrupted
generate resumes where it stopped.
"""

from __future__ import annotations

from tao_trainer import storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import (
    candidate_source,
    my_shards,
    open_generator,
    progress_bar,
    render,
    shard_seed,
)


def run_generate(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    gen_spec = spec.generation
    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("candidates", r, i))]
    source, revision = candidate_source(gen_spec, cfg.model_uri)
    if todo:
        generator = open_generator(gen_spec, source, revision)
        shard_records = {i: storage.read_jsonl(lay.shard("prompts", r, i)) for i in todo}
        bar = progress_bar(sum(len(v) for v in shard_records.values()), f"round {r} generate")
        for i in todo:
            records = shard_records[i]
            sampling = Sampling.from_spec(gen_spec, seed=shard_seed(gen_spec.seed, r, i))
            outs = generator.generate(
                render(generator, records, gen_spec.system_prompt), sampling, progress=bar.update
            )
            storage.write_jsonl(
                lay.shard("candidates", r, i),
                ({**rec, "candidates": cands} for rec, cands in zip(records, outs, strict=True)),
            )
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
        },
        outputs={"candidates": f"{lay.round_dir(r)}/candidates/", "generator": source},
    )
