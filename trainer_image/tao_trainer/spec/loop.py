"""The TAO loop's settings: the body of `TAOJob.spec` that both executors and every stage read.

`tao_operator.api` adds the cluster-only fields (pods, serving, credentials) on top of `LoopSpec`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tao_trainer.spec.base import MODEL_SCHEMES, STORAGE_SCHEMES, CamelModel, check_scheme
from tao_trainer.spec.cache import CacheVolumeSpec
from tao_trainer.spec.costs import BudgetSpec, CostsSpec, check_costs
from tao_trainer.spec.engine import EngineSpec, GrpoVllmSpec
from tao_trainer.spec.evaluation import EvaluationSpec
from tao_trainer.spec.export import ExportSpec
from tao_trainer.spec.lora import LoraSpec
from tao_trainer.spec.scorers import ScorerSpecList, judges_groups
from tao_trainer.spec.teacher import ServedModelSpec, TeacherSpec
from tao_trainer.spec.training_scale import TrainingScale

Stage = Literal["preflight", "watch", "prepare", "generate", "score", "train", "evaluate"]
STAGES: tuple[Stage, ...] = ("prepare", "generate", "score", "train", "evaluate")
ALL_STAGES = ("preflight", "watch", *STAGES)
"""Every stage a `tao-stage` process runs: the per-round stages, the scorer preflight before round 1, and in
continuous mode the watch that waits for enough new prompts before each later round."""


# --------------------------------------------------------------------------------------------- spec pieces


class ModelSpec(CamelModel):
    """A model in Hugging Face format."""

    uri: str = Field(
        description="file:///path or s3://bucket/prefix of an HF-format model directory (weights, config, "
        "tokenizer); hf://org/name for clusters with hub access (never fetched in tests); or a file:// or "
        "s3:// .gguf file, converted once into an HF folder (see ggufDtype)."
    )
    revision: str | None = Field(default=None, description="Hub revision, for hf:// only.")
    gguf_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16",
        description="For a uri naming a .gguf file: the dtype of the HF folder it is converted into, once, "
        "under <run>/models/ (bfloat16 halves the size of float32; CPU stages compute in float32 either way).",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        return check_scheme(v, MODEL_SCHEMES, "model uri")


class PromptsSpec(CamelModel):
    """Where the unlabeled prompts are and how to read them."""

    uri: str = Field(
        description="A JSONL or Parquet file, or a prefix holding *.jsonl, *.jsonl.gz and *.parquet files "
        "(file:// or s3://)."
    )
    field: str = Field(
        default="prompt",
        description="Name of the prompt field: a string, or OpenAI-style messages [{role, content}]. "
        "Every other field of a record is passed to scorers, except labelFields.",
    )
    held_out_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of prompts kept for evaluation, by a stable hash of the prompt: the same prompt "
        "always lands on the same side, whatever else the file holds.",
    )
    max_per_round: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="At most this many training prompts per round (rounds take successive slices).",
    )
    max_line_bytes: int = Field(
        default=16 << 20,
        ge=1024,
        le=1 << 30,
        description="Longest line of a JSONL prompt file, in bytes; a longer line becomes a counted reject "
        "(it is skipped without being held in memory).",
    )
    label_fields: list[str] = Field(
        default_factory=list,
        description="Fields that hold labels (e.g. a reference answer). They are removed before generation, "
        "scoring and training, and read only by evaluation.metrics, which are reported, never used to decide.",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        return check_scheme(v, STORAGE_SCHEMES, "prompts uri")

    @model_validator(mode="after")
    def _label_is_not_prompt(self) -> PromptsSpec:
        if self.field in self.label_fields:
            raise ValueError(f"prompts.labelFields must not contain the prompt field {self.field!r}")
        return self


class StorageOptions(CamelModel):
    """How to reach S3: the storage layer's settings (`storage.configure`), and part of `spec.storage`."""

    # None lets boto3's standard chain decide (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, config file).
    endpoint_url: str | None = Field(
        default=None, description="S3 endpoint override for MinIO-style servers (default: the AWS chain)."
    )
    region: str | None = Field(default=None, description="S3 region.")
    # MinIO and moto serve buckets by path, not by virtual host.
    path_style: bool = Field(default=False, description="Use path-style S3 addressing (MinIO).")


class StorageSpec(StorageOptions):
    """Where every artifact of the run goes."""

    uri: str = Field(description="file:///path or s3://bucket/prefix.")
    cache: CacheVolumeSpec | None = Field(
        default=None,
        description="A volume the stage pods share model downloads on (default: each pod downloads into its "
        "own emptyDir).",
    )

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        return check_scheme(v, STORAGE_SCHEMES, "storage uri")


class GenerationSpec(CamelModel):
    """Stage 1: many candidate responses per prompt."""

    candidates: int = Field(default=8, ge=1, le=256, description="Candidates sampled per prompt (N).")
    temperature: float = Field(default=1.0, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    max_new_tokens: int = Field(default=256, ge=1, le=1_000_000, description="Longest candidate, in tokens.")
    system_prompt: str | None = Field(
        default=None, description="Prepended as a system message (or plain text)."
    )
    teacher: TeacherSpec | None = Field(
        default=None,
        description="Generate with this model instead (curated distillation into the tuned model).",
    )
    model_endpoint: ServedModelSpec | None = Field(
        default=None,
        description="Sample the candidates of the model being tuned from this server instead of loading it in "
        "the generate stage. It must serve each round's starting model (round 1: the base; later: the champion, "
        "e.g. this TAOJob's own serving Deployment): the samples are trained on as that model's.",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto", description="auto: vLLM when a GPU and vllm are present, else transformers."
    )
    batch_size: int = Field(
        default=32, ge=1, le=65536, description="Prompts per generation batch (transformers backend)."
    )
    shards: int = Field(default=1, ge=1, le=1000, description="Prompt shards (parallel pods on Kubernetes).")
    part_size: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Prompts per saved part of a shard: a restarted generate pod redoes at most one part. A "
        "multiple of batchSize samples the same candidates as the shard in one go.",
    )
    seed: int = Field(default=0, description="Sampling seed; each round and shard derive their own from it.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec,
        description="vLLM settings for the model (and for the teacher, unless it has its own).",
    )


class ScoringSpec(CamelModel):
    """Stage 2: label-free scores; a candidate's score is the weighted sum of its scorers' values."""

    scorers: ScorerSpecList = Field(min_length=1, description="Scorers, combined by weighted sum.")


class SftSpec(CamelModel):
    min_score: float = Field(default=1.0, description="Keep candidates scoring at least this.")
    top_k: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Keep at most this many of a prompt's best candidates (default: all).",
    )
    dedupe: bool = Field(default=False, description="Keep identical completions of a prompt once.")


class DpoSpec(CamelModel):
    min_margin: float = Field(
        default=0.5, ge=0.0, description="Pair best and worst only if they differ by this."
    )
    beta: float = Field(default=0.1, gt=0.0, description="DPO beta.")
    sft_weight: float = Field(
        default=1.0,
        ge=0.0,
        le=100.0,
        description="Weight of a negative log-likelihood term on the chosen answers, added to the DPO loss "
        "(RPO). Plain DPO can lower the likelihood of the chosen answers as well as the rejected ones; this term "
        "keeps learning them. 0: plain DPO.",
    )


class GrpoSpec(GrpoVllmSpec):
    # 0.04 (TRL's former default): on the arithmetic benchmark it kept more of the skill within the chosen route
    # than 0.0 did at the same learning rate (docs/training.md).
    beta: float = Field(
        default=0.04,
        ge=0.0,
        description="KL coefficient to the round's starting model, which keeps the policy near it (0: no "
        "reference model, which saves its memory).",
    )
    num_generations: int | None = Field(
        default=None,
        ge=2,
        le=256,
        description="Completions sampled per prompt in training (a GRPO group; its advantages are relative "
        "within it). Default: generation.candidates.",
    )
    votes: Literal["candidates", "group"] = Field(
        default="candidates",
        description="What group scorers (a majority vote, a relative judge) judge a GRPO completion against. "
        "candidates: the generate stage's generation.candidates samples of its prompt from the round's starting "
        "model, a vote that can be larger than a group and does not move with the policy being trained (as "
        "TTRL does); the round then runs generate before train. group: the other completions of its own GRPO "
        "group, sampled online.",
    )
    num_iterations: int = Field(
        default=1, ge=1, le=100, description="Optimisation passes per generation batch."
    )
    # TRL's own defaults; what each did on the arithmetic benchmark is in docs/training.md.
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field(
        default="dapo",
        description="How token losses add up (TRL's loss_type). dapo: over every token of the batch; grpo: per "
        "completion, normalised by its length (favours short right answers and long wrong ones); dr_grpo: by a "
        "fixed length (maxNewTokens), no length bias; bnpo: over the tokens of the local batch.",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="What a completion's advantage (its reward minus its group's mean) is divided by (TRL's "
        "scale_rewards): group: the group's standard deviation; batch: the batch's; none: nothing (Dr. GRPO: "
        "groups where nearly all agree then weigh less).",
    )
    epsilon: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Clipping range of the policy ratio, below and above 1."
    )
    epsilon_high: float | None = Field(
        default=None,
        gt=0.0,
        lt=10.0,
        description="Clipping range above 1, when it differs from epsilon (DAPO's clip-higher: 0.28). "
        "Default: epsilon.",
    )


class TrainingSpec(TrainingScale):  # TrainingScale: strategy, gradient checkpointing, checkpoints
    """Stage 3: train toward the high-scoring candidates (TRL)."""

    method: Literal["sft", "dpo", "grpo"] = Field(
        default="sft",
        description="sft: rejection sampling (train on the best candidates); dpo: best vs worst pairs; "
        "grpo: online RL with the scorers as reward functions.",
    )
    learning_rate: float = Field(default=1e-5, gt=0.0, lt=1.0, description="Peak learning rate.")
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0, description="Share of steps spent warming up.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="linear", description="Learning-rate schedule after warmup."
    )
    epochs: float = Field(default=1.0, gt=0.0, le=1000.0, description="Passes over the round's training set.")
    batch_size: int = Field(
        default=8, ge=1, le=65536, description="Examples per optimizer step (per device)."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=65536, description="Micro-batches per step.")
    max_length: int = Field(
        default=2048, ge=8, le=1_000_000, description="Longest prompt+completion in tokens."
    )
    seed: int = Field(default=0, description="Training seed.")
    lora: LoraSpec | None = Field(default=None, description="Train a LoRA adapter instead of all weights.")
    sft: SftSpec = Field(default_factory=SftSpec)
    dpo: DpoSpec = Field(default_factory=DpoSpec)
    grpo: GrpoSpec = Field(default_factory=GrpoSpec)
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] | None = Field(
        default=None,
        max_length=3,
        description="Experiment trackers that get the training metrics (TRL's report_to): tensorboard (event "
        "files under each round's train/tensorboard in the run's storage), mlflow (MLFLOW_TRACKING_URI and "
        "MLFLOW_EXPERIMENT_NAME from the environment; each round's gate figures and verdict join the round's "
        "run), wandb (WANDB_* variables). Default: tensorboard when it is installed; [] for none.",
    )


class PreflightSpec(CamelModel):
    """Before round 1 spends GPUs on training: can the scorers tell candidates apart at all?

    A sample of prompts is generated and scored as round 1 would; the report gives the score spread, the
    share of prompts whose candidates differ in score, each scorer's share of abstentions (a judge's parse
    failures), and for majority scorers how often the greedy answer already agrees with the vote.
    """

    enabled: bool = Field(default=True, description="Run the preflight before round 1.")
    # 32 and 5%: on the arithmetic example (35% of prompts informative in round 1) 16 prompts once measured
    # 12.5%, too close to a 10% bar; "no signal" must mean almost none, not an unlucky small sample.
    prompts: int = Field(default=32, ge=1, le=4096, description="Prompts sampled (from the training pool).")
    min_informative_share: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Least share of sampled prompts whose candidates must get different combined scores for "
        "the scorers to count as giving a signal.",
    )
    stop_on_no_signal: bool = Field(
        default=True,
        description="Stop the run (preflight stage failed) when the scorers give no signal; false only reports it.",
    )


_DURATION = re.compile(r"^(\d+)(s|m|h)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


class ContinuousSpec(CamelModel):
    """The data flywheel: after round 1, each new round starts from the champion once enough new prompts
    (e.g. captured from serving) have arrived under `prompts.uri` since the previous round's watermark."""

    interval: str = Field(
        default="10m",
        pattern=_DURATION.pattern,
        description="How often the prompts location is checked for new prompts: a number and s, m or h.",
    )
    min_new_prompts: int = Field(
        default=100,
        ge=1,
        le=100_000_000,
        description="New prompts (not seen by an earlier round) that start the next round.",
    )
    max_rounds: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Stop after this many rounds (default: keep improving as prompts arrive).",
    )

    def interval_seconds(self) -> int:
        """
        >>> ContinuousSpec(interval="15m").interval_seconds()
        900
        """
        match = _DURATION.match(self.interval)
        assert match is not None  # the field's pattern guarantees it
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class LoopSpec(CamelModel):
    """The TAO loop: what both `tao run` and the operator execute."""

    model: ModelSpec = Field(description="The model to tune (the first champion).")
    prompts: PromptsSpec
    storage: StorageSpec
    rounds: int = Field(default=1, ge=1, le=1000, description="Rounds of generate, score, train, evaluate.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    scoring: ScoringSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    preflight: PreflightSpec = Field(default_factory=PreflightSpec)
    continuous: ContinuousSpec | None = Field(
        default=None, description="Keep running rounds as new prompts arrive (instead of a fixed `rounds`)."
    )
    export: ExportSpec | None = Field(default=None, description="Publish each promoted champion (and where).")
    costs: CostsSpec | None = Field(default=None, description="Prices: reports then give each round's cost.")
    budget: BudgetSpec | None = Field(
        default=None, description="Caps on the run's GPU/CPU-hours, tokens, money."
    )

    @model_validator(mode="after")
    def _costs_name_endpoints(self) -> LoopSpec:
        scorers = [*self.scoring.scorers, *(self.evaluation.scorers or []), *(self.evaluation.guards or [])]
        check_costs(self.costs, self.budget, ["teacher", "model", *(str(s.name) for s in scorers)])
        teacher = self.generation.teacher
        if self.evaluation.teacher_baseline and (teacher is None or teacher.endpoint is None):
            raise ValueError(
                "evaluation.teacherBaseline needs generation.teacher.endpoint (the teacher to ask)"
            )
        return self

    @model_validator(mode="after")
    def _metric_fields_are_labels(self) -> LoopSpec:
        # A metric reads a label; a label must be declared so that it is stripped from the loop's data.
        for i, metric in enumerate(self.evaluation.metrics):
            if metric.field is None:  # python: reads the declared label fields, and only those
                if not self.prompts.label_fields:
                    raise ValueError(
                        f"evaluation.metrics[{i}] ({metric.type}) reads label fields: list them in "
                        "prompts.labelFields so that the loop never sees them"
                    )
            elif metric.field not in self.prompts.label_fields:
                raise ValueError(
                    f"evaluation.metrics[{i}].field {metric.field!r} must be listed in prompts.labelFields "
                    f"(now {self.prompts.label_fields}) so that the loop never sees it"
                )
        return self

    @model_validator(mode="after")
    def _rounds_or_continuous(self) -> LoopSpec:
        # `rounds` keeps its default under continuous (a serialised spec carries it, so presence proves nothing).
        if self.continuous is not None and self.rounds != 1:
            raise ValueError(
                "set either rounds (a fixed count) or continuous (with continuous.maxRounds), not both"
            )
        return self

    def last_round(self) -> int | None:
        """The last round to run; None: continuous without a limit."""
        if self.continuous is not None:
            return self.continuous.max_rounds
        return self.rounds

    def gate_scorers(self) -> list[Any]:
        return self.evaluation.scorers if self.evaluation.scorers is not None else self.scoring.scorers

    def grpo_votes_on_candidates(self) -> bool:
        """Whether GRPO's group scorers judge against the generate stage's candidates (`training.grpo.votes`)."""
        return (
            self.training.method == "grpo"
            and self.training.grpo.votes == "candidates"
            and any(judges_groups(s) for s in self.scoring.scorers)
        )

    def stages(self, round_: int = 1) -> tuple[Stage, ...]:
        """The stages of one round, in order. GRPO samples and scores online inside training (after generate
        when its votes are the round's candidates); the other methods use the offline stages. Round 1 starts
        with the scorer preflight when it is enabled."""
        per_round: tuple[Stage, ...] = STAGES
        if self.training.method == "grpo":
            votes: tuple[Stage, ...] = ("generate",) if self.grpo_votes_on_candidates() else ()
            per_round = ("prepare", *votes, "train", "evaluate")
        if round_ == 1 and self.preflight.enabled:
            return ("preflight", *per_round)
        if round_ > 1 and self.continuous is not None:
            return ("watch", *per_round)
        return per_round
