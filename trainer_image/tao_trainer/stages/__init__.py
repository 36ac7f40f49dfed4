"""The stages, one module each; `tao-stage <stage> --config URI` runs one of them in its own process.

Round 1 may start with `preflight` (can the scorers tell candidates apart?); in continuous mode later rounds
start with `watch` (wait for new prompts). Then `prepare` -> `generate` -> `score` -> `train` -> `evaluate`
(GRPO samples and scores inside `train`). `common` holds what they share. Each stage reads a StageConfig and
returns a StageResult (`tao_trainer.contract`); its artifacts go where `tao_trainer.layout` says.

Nothing is imported here: a stage module loads its heavy libraries (torch, TRL) only when it runs.
"""

RUNNERS: dict[str, str] = {
    "preflight": "tao_trainer.stages.preflight:run_preflight",
    "watch": "tao_trainer.stages.watch:run_watch",
    "prepare": "tao_trainer.stages.prepare:run_prepare",
    "generate": "tao_trainer.stages.generate:run_generate",
    "score": "tao_trainer.stages.score:run_score",
    "train": "tao_trainer.stages.train:run_train",
    "evaluate": "tao_trainer.stages.evaluate:run_evaluate",
}
"""Each stage's entry point, `module:function(StageConfig) -> StageResult`, imported when the stage runs."""
