"""The TAOJob resource (tao.dev/v1alpha1): the single source of truth for its schema.

`tao run` and the operator both parse manifests with `parse_taojob`; the CRD is rendered from these models.
The loop settings themselves live in `tao_trainer.spec` because every stage reads them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tao_operator import manifest_input
from tao_operator.api_status import PHASES as PHASES
from tao_operator.api_status import ChampionStatus as ChampionStatus
from tao_operator.api_status import Condition as Condition
from tao_operator.api_status import Phase as Phase
from tao_operator.api_status import PreflightStatus as PreflightStatus
from tao_operator.api_status import RoundSpec as RoundSpec
from tao_operator.api_status import RoundStatus as RoundStatus
from tao_operator.api_status import ServingStatus as ServingStatus
from tao_operator.api_status import StageStatus as StageStatus
from tao_operator.api_status import TAOJobStatus
from tao_trainer.layout import RunLayout
from tao_trainer.spec import SCORER_UNION_TAGS, CamelModel, LoopSpec
from tao_trainer.spec.base import STORAGE_SCHEMES, check_scheme

GROUP = "tao.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TAOJob"
PLURAL = "taojobs"


class ObjectMeta(CamelModel):
    """The parts of metadata the product reads; the rest is kept but ignored."""

    model_config = CamelModel.model_config | {"extra": "allow"}
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=48)
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None


# Kubernetes objects embedded as-is (tolerations, affinity, env, resources) are plain dicts: their schema is
# Kubernetes' own, validated by the API server when the operator creates the pods.
K8sObject = dict[str, Any]


class PodSettings(CamelModel):
    """How a stage's pods run; unset fields fall back to spec.pods.default, then to the operator's defaults."""

    image: str | None = Field(
        default=None, description="Container image (default: the operator's trainer image)."
    )
    resources: K8sObject | None = Field(default=None, description="Container resources (requests/limits).")
    gpus: int | None = Field(
        default=None, ge=0, le=64, description="nvidia.com/gpu per pod (added to requests and limits)."
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Pod nodeSelector.")
    tolerations: list[K8sObject] | None = Field(default=None, description="Pod tolerations.")
    affinity: K8sObject | None = Field(default=None, description="Pod affinity.")
    priority_class_name: str | None = Field(default=None, description="Pod priorityClassName.")
    labels: dict[str, str] | None = Field(
        default=None, description="Extra labels on the Job and its pods (e.g. kueue.x-k8s.io/queue-name)."
    )
    annotations: dict[str, str] | None = Field(default=None, description="Extra annotations on the pods.")
    image_pull_secrets: list[str] | None = Field(default=None, description="Names of image pull Secrets.")
    service_account_name: str | None = Field(
        default=None, description="Pod service account (for IRSA / workload identity to reach storage)."
    )
    env: list[K8sObject] | None = Field(
        default=None, description="Extra environment variables (EnvVar objects)."
    )
    backoff_limit: int | None = Field(
        default=None, ge=0, le=100, description="Retries of a failed pod before the stage fails."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, le=31_536_000, description="Stage time limit (at most a year)."
    )

    @field_validator("resources")
    @classmethod
    def _resources(cls, v: K8sObject | None) -> K8sObject | None:
        return manifest_input.check_resources(v)


class TrainPodSettings(PodSettings):
    """The train stage's pods, which alone may span several machines."""

    nodes: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Machines the train stage spans: above 1, an Indexed Job of this many pods (each with `gpus` "
        "GPUs) joined by torchrun's c10d rendezvous through a headless Service; every pod must be scheduled "
        "at once.",
    )


class PodsSpec(CamelModel):
    """Per-stage pod settings; each stage's settings are merged over `default`. The preflight uses `generate`'s."""

    default: PodSettings = Field(default_factory=PodSettings)
    watch: PodSettings = Field(
        default_factory=PodSettings,
        description="Continuous mode's watch pod, which polls for new prompts between rounds (no GPU from default).",
    )
    prepare: PodSettings = Field(default_factory=PodSettings)
    generate: PodSettings = Field(default_factory=PodSettings)
    score: PodSettings = Field(default_factory=PodSettings)
    train: TrainPodSettings = Field(default_factory=TrainPodSettings)
    evaluate: PodSettings = Field(default_factory=PodSettings)


class SecretKeyRef(CamelModel):
    name: str = Field(description="Secret name, in the TAOJob's namespace.")


class CredentialsSpec(CamelModel):
    """Storage credentials for stage and serving pods; never copied into status, events or logs."""

    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="A Secret whose keys become environment variables of the pods (e.g. AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY). Prefer serviceAccountName with IRSA / workload identity where available.",
    )


class CaptureSpec(CamelModel):
    """Prompt capture: a proxy beside vLLM in each serving pod appends the prompts it forwards to storage, in
    batched JSONL objects, so that serving feeds the next round (continuous mode). A slow or failing store
    never fails a request: the proxy buffers up to `maxBuffer` prompts and counts what it drops."""

    enabled: bool = Field(default=False, description="Put the capture proxy in front of the server.")
    uri: str | None = Field(
        default=None,
        description="Where batches are written (default: <prompts.uri>/captured/, which needs prompts.uri to be "
        "a directory prefix ending in '/'). The serving pods need write access there.",
    )
    port: int = Field(
        default=8080, ge=1, le=65535, description="Port of the proxy (the Service sends traffic here)."
    )
    batch_size: int = Field(default=500, ge=1, le=100_000, description="Prompts per stored object, at most.")
    flush_seconds: int = Field(
        default=30, ge=1, le=86_400, description="Longest time a captured prompt waits in memory."
    )
    max_buffer: int = Field(
        default=10000,
        ge=1,
        le=10_000_000,
        description="Prompts held while storage is slow or down; more are dropped.",
    )
    redact: str | None = Field(
        default="tao_trainer.capture:redact_basic",
        description="'module:function' applied to each record before it is stored (returns the record or None to "
        "drop it); the default masks e-mail addresses, phone and card numbers. null stores prompts as received.",
    )
    capture_responses: bool = Field(
        default=False, description="Also store the server's answers (fields.response)."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else check_scheme(v, STORAGE_SCHEMES, "serving.capture.uri")


class ServingSpec(CamelModel):
    """The rollout: a vLLM OpenAI-compatible Deployment + Service on the champion model."""

    enabled: bool = Field(default=True, description="Serve the champion once a round is promoted.")
    image: str | None = Field(default=None, description="Serving image (default: the operator's vLLM image).")
    replicas: int = Field(default=1, ge=0, le=1000, description="Serving replicas.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the OpenAI-compatible server.")
    served_model_name: str | None = Field(
        default=None, description="Model name clients send (default: the TAOJob name)."
    )
    args: list[str] = Field(default_factory=list, max_length=256, description="Extra vLLM server arguments.")
    pod: PodSettings = Field(
        default_factory=PodSettings, description="Pod settings of the serving Deployment."
    )
    pinned_round: int | None = Field(
        default=None,
        ge=0,
        description="Serve this round's model (0: the base) instead of the champion: a rollback.",
    )
    capture: CaptureSpec = Field(
        default_factory=CaptureSpec, description="Capture served prompts for later rounds."
    )


class TAOJobSpec(LoopSpec):
    """Desired state of a TAOJob: the loop, plus what only a cluster needs."""

    suspend: bool = Field(default=False, description="Start nothing new; running stage Jobs are suspended.")
    pods: PodsSpec = Field(default_factory=PodsSpec, description="Stage pod settings.")
    credentials: CredentialsSpec = Field(default_factory=CredentialsSpec, description="Storage credentials.")
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Serving of the champion.")

    @model_validator(mode="after")
    def _capture_has_a_place(self) -> TAOJobSpec:
        capture = self.serving.capture
        if capture.enabled and capture.uri is None and not self.prompts.uri.endswith("/"):
            raise ValueError(
                "serving.capture.uri is required when prompts.uri is not a directory prefix ending in '/' "
                f"(now {self.prompts.uri!r}): captured batches must land where the next round reads prompts"
            )
        if capture.enabled and capture.port == self.serving.port:
            raise ValueError(f"serving.capture.port must differ from serving.port ({self.serving.port})")
        return self

    def loop(self) -> LoopSpec:
        """The part of the spec that stages read (the cluster-only fields stay with the operator)."""
        return LoopSpec.model_validate(self.model_dump(include=set(LoopSpec.model_fields), by_alias=False))

    def capture_uri(self) -> str:
        """Where captured prompts go."""
        return self.serving.capture.uri or self.prompts.uri.rstrip("/") + "/captured/"

    history_limit: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Rounds kept in status.rounds; older ones are in storage (<run>/history.jsonl, round reports).",
    )


# What may change mid-run, for both executors (`tao run`, the operator; see edits.py): any other edit of a started
# run is refused with a condition naming the fields. `evaluation` and `scoring` apply from the next round.
_MUTABLE = "rounds suspend serving historyLimit continuous.maxRounds pods credentials evaluation scoring export costs budget"
MUTABLE_MID_RUN: Final = tuple(_MUTABLE.split())
# Of those, what a round reads from its start to its end: an edit applies from the next round not yet started.
# Each round records these sections when its first stage starts and every stage of it runs on that record
# (edits.round_snapshot), so that a round's candidates are scored, trained on and gated under one spec.
ROUND_SNAPSHOT: Final = ("evaluation", "scoring")


# ------------------------------------------------------------------- status vocabulary (models: api_status.py)


class ConditionType:
    """Condition types of a TAOJob (metav1.Condition); `Ready` is the summary the phase is derived from."""

    READY: Final = "Ready"
    SERVING: Final = "Serving"
    SCORERS_INFORMATIVE: Final = "ScorersInformative"
    DEGRADED: Final = "Degraded"  # something keeps the run from going on as specified; never terminal
    BUDGET_EXHAUSTED: Final = "BudgetExhausted"  # spec.budget reached: no new stage starts until it is raised


class Reason:
    """Condition reasons. While a stage runs, Ready's reason is that stage's phase (e.g. `Training`)."""

    INVALID_SPEC: Final = "InvalidSpec"
    STAGE_FAILED: Final = "StageFailed"
    SUCCEEDED: Final = "Succeeded"
    ROLLING_OUT: Final = "RollingOut"
    SUSPENDED: Final = "Suspended"
    BUDGET_EXHAUSTED: Final = "BudgetExhausted"
    WITHIN_BUDGET: Final = "WithinBudget"
    AVAILABLE: Final = "Available"
    PINNED_ROUND_UNKNOWN: Final = "PinnedRoundUnknown"
    SIGNAL: Final = "Signal"
    NO_SIGNAL: Final = "NoSignal"
    AS_EXPECTED: Final = "AsExpected"  # Degraded=False
    CONFLICT: Final = "Conflict"  # a child's name is taken by an object this TAOJob does not control
    DELETING: Final = "WaitingForDeletion"  # an old object of that name is being deleted
    API_ERROR: Final = "ApiError"
    EDIT_REFUSED: Final = "EditRefused"
    NOT_ALLOWED: Final = "NotAllowed"  # an image or service account outside the operator's allow-list
    POD_STUCK: Final = "PodStuck"
    RESULT_MISSING: Final = "ResultMissing"  # a finished stage's pods were gone: a new attempt re-reports it
    DISABLED: Final = "Disabled"  # Serving=False: serving.enabled is false (or nothing to serve): scaled to 0


class EventReason:
    """Reasons of the Kubernetes Events the operator posts on a TAOJob."""

    INVALID_SPEC: Final = "InvalidSpec"
    STAGE_STARTED: Final = "StageStarted"
    STAGE_SUCCEEDED: Final = "StageSucceeded"
    STAGE_FAILED: Final = "StageFailed"
    PROMOTED: Final = "Promoted"
    NOT_PROMOTED: Final = "NotPromoted"
    ROLLOUT_STARTED: Final = "RolloutStarted"
    SUSPENDED: Final = "Suspended"
    RESUMED: Final = "Resumed"
    BUDGET_EXHAUSTED: Final = "BudgetExhausted"
    JOB_SUSPENDED: Final = "JobSuspended"
    JOB_RESUMED: Final = "JobResumed"
    CONFLICT: Final = "Conflict"
    API_ERROR: Final = "ApiError"
    EDIT_REFUSED: Final = "EditRefused"
    NOT_ALLOWED: Final = "NotAllowed"
    POD_STUCK: Final = "PodStuck"
    RESULT_MISSING: Final = "ResultMissing"
    RETRY: Final = "Retry"


# Labels and annotations the operator writes on its children (and reads back).
LABEL_JOB: Final = f"{GROUP}/job"
LABEL_ROUND: Final = f"{GROUP}/round"
LABEL_STAGE: Final = f"{GROUP}/stage"
ANNOTATION_MODEL_URI: Final = f"{GROUP}/model-uri"
ANNOTATION_ADAPTER_URI: Final = f"{GROUP}/adapter-uri"
"""Serving: the LoRA adapter served over the model of ANNOTATION_MODEL_URI (absent when a full model is served)."""
ANNOTATION_SUSPENDED_BY_OPERATOR: Final = f"{GROUP}/suspended-by-operator"
"""Marks a Job suspended because its TAOJob was, so that resuming never overrides a queue manager's suspension."""
ANNOTATION_RETRY: Final = f"{GROUP}/retry"  # a number: raised past status.retry, failed stages run again
ANNOTATION_TEMPLATE_HASH: Final = f"{GROUP}/template-hash"  # serving objects: the desired manifest's hash
LABEL_KUEUE_QUEUE: Final = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_JOB_UID: Final = "kueue.x-k8s.io/job-uid"  # set by Kueue on the Workload it makes for a Job
# Set by Kubernetes' Job controller.
LABEL_JOB_NAME: Final = "job-name"
LABEL_CONTROLLER_UID: Final = "batch.kubernetes.io/controller-uid"
ANNOTATION_COMPLETION_INDEX: Final = "batch.kubernetes.io/job-completion-index"


class TAOJob(CamelModel):
    api_version: Literal["tao.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TAOJob"]
    metadata: ObjectMeta
    spec: TAOJobSpec
    status: TAOJobStatus | None = None

    def run_layout(self) -> RunLayout:
        """Where this TAOJob's run lives: the same for the operator and `tao run` (which has no uid: `local`)."""
        meta = self.metadata
        return RunLayout.for_job(self.spec.storage.uri, meta.namespace, meta.name, meta.uid)


class SpecError(ValueError):
    """A TAOJob that cannot run; the message names each bad field and what is allowed."""

    def __init__(self, problems: list[str], source: str = "TAOJob") -> None:
        self.problems = problems
        super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


def _field_path(loc: tuple[Any, ...]) -> str:
    """`('spec','scoring','scorers',0,'majority','extract')` -> `spec.scoring.scorers[0].extract`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith("function-") or part in _UNION_TAGS):
            continue  # pydantic's internal names for union members: not a field the user wrote
        else:
            out += f".{part}" if out else part
    return out


_UNION_TAGS: set[str] = set(SCORER_UNION_TAGS)


def describe(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors(include_url=False):
        path = _field_path(tuple(e["loc"])) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        problems.append(f"{path}: {msg}")
    return problems


def parse_taojob(doc: dict[str, Any], source: str = "TAOJob") -> TAOJob:
    """Validate a manifest; raise SpecError naming each bad field."""
    if not isinstance(doc, dict):
        raise SpecError(["(top level): a TAOJob manifest must be a mapping"], source)
    problems = manifest_input.document_problems(doc)  # NaN/inf anywhere, nesting
    if problems:
        raise SpecError(problems, source)
    try:
        return TAOJob.model_validate(doc)
    except ValidationError as err:
        raise SpecError(describe(err), source) from None


def resolve_local_paths(job: TAOJob, base_dir: Path) -> TAOJob:
    """Plain relative paths in a manifest refer to files beside it: make them absolute file:// URIs."""

    def fix(uri: str) -> str:
        if "://" in uri:
            return uri
        # A trailing slash says "a prefix of files" (prompts, capture): keep it.
        return (base_dir / uri).resolve().as_uri() + ("/" if uri.endswith("/") else "")

    spec = job.spec
    spec.model.uri = fix(spec.model.uri)
    spec.prompts.uri = fix(spec.prompts.uri)
    spec.storage.uri = fix(spec.storage.uri)
    if spec.generation.teacher is not None and spec.generation.teacher.uri is not None:
        spec.generation.teacher.uri = fix(spec.generation.teacher.uri)
    if spec.export is not None:
        spec.export.uri = fix(spec.export.uri)
    for scorer in [*spec.scoring.scorers, *(spec.evaluation.scorers or [])]:
        # Each scorer spec names its own local-file fields: code files stay paths, data files become URIs.
        for field in scorer.PATH_FIELDS:
            value = getattr(scorer, field)
            if isinstance(value, str) and not Path(value).is_absolute():
                setattr(scorer, field, str((base_dir / value).resolve()))
        for field in scorer.URI_FIELDS:
            value = getattr(scorer, field)
            if isinstance(value, str) and not Path(value).is_absolute():
                setattr(scorer, field, fix(value))
    for metric in spec.evaluation.metrics:  # a python reporting metric's code file
        if metric.path is not None and not Path(metric.path).is_absolute():
            metric.path = str((base_dir / metric.path).resolve())
    return job


def load_taojob_file(path: str) -> TAOJob:
    """The TAOJob in a manifest file; ``-`` reads standard input (its relative paths resolve against the
    working directory)."""
    source = "<stdin>" if path == "-" else path
    docs, problems = manifest_input.read_manifest(path)  # size, UTF-8, no aliases, bounded nesting
    if problems:
        raise SpecError(problems, source)
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise SpecError([f"expected exactly one document of kind {KIND}, found {len(jobs)}"], source)
    base = Path.cwd() if path == "-" else Path(path).resolve().parent
    return resolve_local_paths(parse_taojob(jobs[0], source), base)
