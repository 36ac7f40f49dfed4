"""Stage 3: train toward the high-scoring candidates with TRL.

Each method is a (dataset builder in train_data.py, trainer here) pair, as TRL pairs a config with a trainer:
- sft: rejection sampling: a prompt's candidates at or above `sft.minScore` (best first, `topK` at most);
- dpo: the best and the worst candidate of a prompt, when their scores differ by `dpo.minMargin` (plus a
  likelihood term on the chosen one, `dpo.sftWeight`);
- grpo: online RL on the round's prompts with the scorers themselves as reward functions; group scorers (a
  majority vote) judge each completion against the round's generated candidates (`grpo.votes`).
The result is an HF-format model (or a LoRA adapter) under round-NNN/train/model.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tao_trainer import models, storage, tracking
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.scorers.combine import VOTES_COLUMN
from tao_trainer.spec import LoopSpec, TrainingSpec
from tao_trainer.spec.training_scale import use_gradient_checkpointing
from tao_trainer.stages import train_checkpoints, train_distributed
from tao_trainer.stages.common import log, my_shards
from tao_trainer.stages.train_data import (
    build_dataset,
    check_trl_prompt_ids,
    no_examples_error,
    scored_candidates,
    sft_tokens,
    source_counts,
)
from tao_trainer.train_launch import Topology, is_launched_worker, needs_launcher


def _common_args(t: TrainingSpec, out: str, gradient_checkpointing: bool) -> dict[str, Any]:
    return {
        "output_dir": out,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "warmup_steps": t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of total steps
        "lr_scheduler_type": t.lr_scheduler,
        "seed": t.seed,
        "logging_steps": 10,
        **train_checkpoints.trainer_save_args(t.checkpoints),
        "report_to": [],  # set by tracking.trainer_args
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "bf16": models.device() == "cuda",
        # Without a GPU, accelerate forms the process group over gloo only when told it runs on the CPU.
        "use_cpu": models.device() != "cuda",
        # TRL would turn it on for every model; it costs time and is needed only where activations crowd out
        # the weights (training.gradientCheckpointing, by default above 1B parameters).
        "gradient_checkpointing": gradient_checkpointing,
    }


def _peft_config(spec: LoopSpec) -> Any:
    if spec.training.lora is None:
        return None
    from peft import LoraConfig

    lora = spec.training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def check_quantization(spec: LoopSpec, device: str) -> None:
    """Refuse QLoRA where bitsandbytes' 4-bit kernels cannot run, before any data or model is read.

    >>> spec = LoopSpec.model_validate({"model": {"uri": "file:///m"}, "prompts": {"uri": "file:///p"},
    ...     "storage": {"uri": "file:///r"}, "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
    ...     "training": {"lora": {"quantization": "4bit", "merge": False}}})
    >>> check_quantization(spec, "cpu")
    Traceback (most recent call last):
    ...
    ValueError: training.lora.quantization: 4bit (QLoRA) needs a GPU: bitsandbytes' 4-bit kernels run on CUDA, and this train stage runs on the CPU; remove the field, or give the train stage GPUs (pods.train.gpus)
    """
    lora = spec.training.lora
    if lora is None or lora.quantization is None:
        return
    if device != "cuda":
        raise ValueError(
            f"training.lora.quantization: {lora.quantization} (QLoRA) needs a GPU: bitsandbytes' 4-bit kernels "
            "run on CUDA, and this train stage runs on the CPU; remove the field, or give the train stage GPUs "
            "(pods.train.gpus)"
        )
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"training.lora.quantization: {lora.quantization} (QLoRA) needs the bitsandbytes package in the "
            "trainer image (pip install 'tao-operator[qlora]'); the default image does not have it"
        )


def training_model(model_path: str, lora: bool, quantize: bool = False) -> tuple[Any, str]:
    """What TRL trains from, and the folder of the full weights under it.

    A plain model is handed over as a path. An unmerged LoRA champion (an adapter over the run's original base)
    is loaded as that base with the adapter trainable: the round continues training the champion's adapter rather
    than stacking a new one on it, so every round's adapter is one adapter over the original base, which serving
    loads as base + one LoRA module (and a `lora.r` change needs a new run). Without `lora` (a spec that dropped
    it), the champion is trained in full, merged.
    """
    adapter = models.adapter_of(model_path)
    weights = model_path if adapter is None else adapter.base
    if quantize:  # QLoRA: a 4-bit base (with the champion's adapter on it, trainable, if it is one)
        return models.load_4bit_for_training(model_path), weights
    if adapter is None:
        return model_path, model_path
    return models.load_causal_lm(model_path, for_training=lora), weights


def training_model_base(model_path: str) -> str:
    """The folder of the full weights under `model_path`: its base when it is an adapter."""
    adapter = models.adapter_of(model_path)
    return model_path if adapter is None else adapter.base


def _trainer(cfg: StageConfig, model_path: str, tokenizer: Any, rows: list[dict[str, Any]], out: str) -> Any:
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # per-map bars of dataset preparation drown the stage's own progress lines

    spec, t = cfg.spec, cfg.spec.training
    quantize = t.lora is not None and t.lora.quantization is not None
    model, weights_path = training_model(model_path, lora=t.lora is not None, quantize=quantize)
    # A continued adapter already carries its LoRA config; a second one would stack on it.
    peft_config = None if models.adapter_of(model_path) is not None else _peft_config(spec)
    checkpointing = use_gradient_checkpointing(
        t.gradient_checkpointing, train_distributed.parameter_count(weights_path)
    )
    common = _common_args(t, out, checkpointing) | tracking.trainer_args(cfg, Path(out).parent)
    if t.method == "sft":
        dataset = Dataset.from_list([sft_tokens(row, tokenizer) for row in rows])
    else:
        if t.method == "grpo":
            check_trl_prompt_ids(tokenizer, rows[0])
        dataset = Dataset.from_list(
            [{k: v for k, v in row.items() if k not in ("prompt_ids", "source")} for row in rows]
        )
    callbacks = [train_checkpoints.checkpoint_callback(t.checkpoints, _checkpoints(cfg))]
    if t.method == "sft":
        from trl import SFTConfig, SFTTrainer

        sft_args = SFTConfig(**common, max_length=t.max_length, completion_only_loss=True)
        return SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    if t.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        dpo_args = DPOConfig(**common, max_length=t.max_length, beta=t.dpo.beta, **dpo_loss_args(t))
        # A model path, not an in-memory model: TRL then loads the frozen reference from the same path. A
        # continued adapter's reference is its base with the adapter switched off (TRL's rule for peft models).
        return DPOTrainer(
            model=model,
            args=dpo_args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    from trl import GRPOConfig, GRPOTrainer

    from tao_trainer.generation import grpo_vllm_args
    from tao_trainer.scorers import as_reward_funcs, build_scorer

    gen = spec.generation
    votes = VOTES_COLUMN if spec.grpo_votes_on_candidates() else None
    reward_funcs, weights = as_reward_funcs([build_scorer(s) for s in spec.scoring.scorers], votes=votes)
    group = t.grpo.num_generations or gen.candidates
    # GRPO needs every batch of generations to hold whole groups of `group` completions.
    batch = max(t.batch_size // group, 1) * group
    grpo_args = GRPOConfig(
        **(common | {"per_device_train_batch_size": batch}),
        num_generations=group,
        max_completion_length=gen.max_new_tokens,
        temperature=max(gen.temperature, 1e-3),
        top_p=gen.top_p,
        num_iterations=t.grpo.num_iterations,
        **grpo_loss_args(t),
        reward_weights=weights,
        **grpo_vllm_args(t.grpo.vllm, t.grpo.vllm_gpu_memory_utilization, gen.engine),
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=grpo_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )


def grpo_loss_args(t: TrainingSpec) -> dict[str, Any]:
    """TRL's GRPO loss settings, as training.grpo names them.

    >>> grpo_loss_args(TrainingSpec.model_validate({"grpo": {"lossType": "dr_grpo", "scaleRewards": "none"}}))
    {'beta': 0.04, 'loss_type': 'dr_grpo', 'scale_rewards': 'none', 'epsilon': 0.2, 'epsilon_high': None}
    """
    g = t.grpo
    return {
        "beta": g.beta,
        "loss_type": g.loss_type,
        "scale_rewards": g.scale_rewards,
        "epsilon": g.epsilon,
        "epsilon_high": g.epsilon_high,
    }


def dpo_loss_args(t: TrainingSpec) -> dict[str, Any]:
    """TRL's DPO loss terms: the sigmoid (DPO) loss, plus its `sft` loss on the chosen answers when weighted.

    >>> dpo_loss_args(TrainingSpec.model_validate({"dpo": {"sftWeight": 0.5}}))
    {'loss_type': ['sigmoid', 'sft'], 'loss_weights': [1.0, 0.5]}
    >>> dpo_loss_args(TrainingSpec.model_validate({"dpo": {"sftWeight": 0}}))
    {'loss_type': ['sigmoid']}
    """
    if t.dpo.sft_weight == 0:
        return {"loss_type": ["sigmoid"]}
    return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, t.dpo.sft_weight]}


def _checkpoints(cfg: StageConfig) -> str:
    return train_checkpoints.checkpoints_prefix(RunLayout(cfg.run_uri).train_dir(cfg.round))


def run_train(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    model_uri = lay.model(r)
    done = f"{lay.train_dir(r)}/result.json"
    if storage.exists(done):
        # Written only after the model was uploaded whole: training finished; a re-run only re-reports it.
        return StageResult.model_validate_json(storage.read_text(done))
    check_quantization(spec, models.device())
    topology = Topology.from_env(os.environ)
    if needs_launcher(topology, spec.training.strategy) and not is_launched_worker():
        # This pod's process starts the node's training processes (one per GPU) and reports for them.
        return train_distributed.launch(cfg, topology)

    models.cpu_threads()
    model_path = models.resolve(cfg.model_uri)
    tokenizer = models.load_tokenizer(model_path)
    rows = build_dataset(cfg, tokenizer)
    n_candidates = (
        sum(len(row.get(VOTES_COLUMN, ())) for row in rows)  # those its group scorers voted on
        if spec.training.method == "grpo"
        else sum(len(rec["candidates"]) for rec, _ in scored_candidates(lay, r, my_shards(cfg)))
    )
    if not rows:
        raise ValueError(no_examples_error(spec, r))
    if is_main_process():
        storage.write_jsonl(f"{lay.train_dir(r)}/dataset.jsonl", rows)
    log(f"train: {spec.training.method} on {len(rows)} example(s) from {cfg.model_uri}")

    with _workdir() as tmp:
        trainer = _trainer(cfg, model_path, tokenizer, rows, str(Path(tmp) / "trainer"))
        resume = _restore_checkpoint(cfg, Path(tmp) / "trainer")
        resumed_from = int(trainer.state.global_step) if resume is None else _step_of(resume)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
        lora = spec.training.lora
        # An adapter records the run's original base, never the previous round's adapter.
        base_uri = (
            (models.adapter_base_uri(model_path) or cfg.model_uri)
            if lora is not None and not lora.merge
            else None
        )
        local = Path(tmp) / "model"
        if spec.training.strategy == "ddp":
            if not is_main_process():
                # Under torchrun every rank trains; only rank 0 saves, uploads and reports.
                return StageResult(stage="train", round=r, message="not the main process")
            model = trainer.model
            if lora is not None and lora.merge:
                model = model.merge_and_unload()
            models.save_model(model, tokenizer, local, base_uri=base_uri)
        elif not train_distributed.save_sharded(
            trainer, local, tokenizer, lora, training_model_base(model_path), base_uri
        ):
            return StageResult(stage="train", round=r, message="not the main process")
        storage.upload_dir(local, model_uri)
        storage.cache_tree(local, model_uri)  # evaluate on the same cache volume: no download of it
        tensorboard = tracking.keep_tensorboard(cfg, Path(tmp))
    tracked = {"tensorboard": tensorboard} if tensorboard else {}
    if run_id := tracking.mlflow_run_id(spec.training):
        tracked["mlflowRunId"] = run_id

    history = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "trainLoss": _finite(output.training_loss),
        "firstLoss": _finite(history[0]["loss"]) if history else None,
        "lastLoss": _finite(history[-1]["loss"]) if history else None,
    }
    storage.write_json(
        f"{lay.train_dir(r)}/metrics.json", {"metrics": metrics, "logHistory": trainer.state.log_history}
    )
    steps = int(trainer.state.global_step)
    result = StageResult(
        stage="train",
        round=r,
        counts={
            "examples": len(rows),
            "candidates": n_candidates,
            "steps": steps,
            # Steps this process trained; the rest came from the checkpoint it resumed from.
            "stepsRun": steps - resumed_from,
            "resumedFromStep": resumed_from,
            "processes": int(trainer.args.world_size),
        }
        | source_counts(rows),
        metrics=metrics,
        outputs={"model": model_uri, "dataset": f"{lay.train_dir(r)}/dataset.jsonl"} | tracked,
    )
    storage.write_text(done, result.model_dump_json(by_alias=True))
    return result


@contextlib.contextmanager
def _workdir() -> Iterator[str]:
    """The trainer's local folder: one that the node's processes share (the launcher's, or under plain
    torchrun one named after its run id), else a temporary one."""
    shared = os.environ.get(train_distributed.ENV_WORKDIR)
    if shared is None and "TORCHELASTIC_RUN_ID" in os.environ:
        shared = str(Path(tempfile.gettempdir()) / f"tao-train-{os.environ['TORCHELASTIC_RUN_ID']}")
    if shared is not None:
        Path(shared).mkdir(parents=True, exist_ok=True)
        yield shared
        return
    with tempfile.TemporaryDirectory(prefix="tao-train-") as tmp:
        yield tmp


def _restore_checkpoint(cfg: StageConfig, output_dir: Path) -> Path | None:
    """The newest complete checkpoint in storage, downloaded once per node (the trainer exists, so the
    processes can wait for each other)."""
    prefix = _checkpoints(cfg)
    steps = train_checkpoints.complete_steps(prefix)
    if not steps:
        return None
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        train_checkpoints.restore_newest(prefix, output_dir)
    train_checkpoints.wait_for_all()
    return output_dir / f"checkpoint-{steps[-1]}"


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix("checkpoint-"))


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, 5) if math.isfinite(v) else None
