"""The TAOJob loop schema, in one home: the base model, the loop settings and the scorer specs.

Pure pydantic (no torch, no Kubernetes, no I/O, no scorer implementation): the operator imports this package,
renders the CRD from it, and every stage reads the same models.

- `base`: `CamelModel` (camelCase in YAML, snake_case in Python, unknown fields rejected) and shared checks;
- `loop`: `LoopSpec` and its parts (model, prompts, storage, generation, scoring, training, evaluation, ...);
- `scorers`: the `scorers:` list, a union discriminated on `type` (`scorer_base`, `scorer_families`);
- `endpoint`: an OpenAI-compatible endpoint (judges) and Secret key references;
- `export`: where promoted champions are published (a storage prefix, a Hugging Face repo);
- `teacher`: who writes candidates for distillation; `costs`: prices and budget caps.
"""

from tao_trainer.spec.base import MODEL_SCHEMES, STORAGE_SCHEMES, CamelModel, check_regex, check_scheme
from tao_trainer.spec.cache import CACHE_MOUNT, CacheVolumeSpec
from tao_trainer.spec.costs import BudgetSpec, CostsSpec, TokenPrice
from tao_trainer.spec.endpoint import EndpointSpec, SecretKeySelector
from tao_trainer.spec.evaluation import EvaluationSpec, MetricSpec
from tao_trainer.spec.export import ExportSpec, HubExportSpec
from tao_trainer.spec.loop import (
    ALL_STAGES,
    STAGES,
    ContinuousSpec,
    DpoSpec,
    GenerationSpec,
    GrpoSpec,
    LoopSpec,
    LoraSpec,
    ModelSpec,
    PreflightSpec,
    PromptsSpec,
    ScoringSpec,
    SftSpec,
    Stage,
    StorageOptions,
    StorageSpec,
    TeacherSpec,
    TrainingSpec,
)
from tao_trainer.spec.scorers import (
    BUILTIN_SCORER_TYPES,
    SCORER_UNION_TAGS,
    AnyScorerSpec,
    CustomSpec,
    FieldCheck,
    JsonSpec,
    JudgeSpec,
    MajoritySpec,
    PythonSpec,
    PythonTestsSpec,
    RegexSpec,
    RewardModelSpec,
    ScorerSpec,
    ScorerSpecBase,
    ScorerSpecList,
    SqlSpec,
    parse_scorer_spec,
    validate_scorer_list,
)
from tao_trainer.spec.teacher import ServedModelSpec

__all__ = [
    "ALL_STAGES",
    "BUILTIN_SCORER_TYPES",
    "MODEL_SCHEMES",
    "SCORER_UNION_TAGS",
    "STAGES",
    "STORAGE_SCHEMES",
    "AnyScorerSpec",
    "BudgetSpec",
    "CamelModel",
    "ContinuousSpec",
    "CostsSpec",
    "CustomSpec",
    "DpoSpec",
    "EndpointSpec",
    "EvaluationSpec",
    "ExportSpec",
    "FieldCheck",
    "GenerationSpec",
    "GrpoSpec",
    "HubExportSpec",
    "JsonSpec",
    "JudgeSpec",
    "LoopSpec",
    "LoraSpec",
    "MajoritySpec",
    "MetricSpec",
    "ModelSpec",
    "PreflightSpec",
    "PromptsSpec",
    "PythonSpec",
    "PythonTestsSpec",
    "RegexSpec",
    "RewardModelSpec",
    "ScorerSpec",
    "ScorerSpecBase",
    "ScorerSpecList",
    "ScoringSpec",
    "SecretKeySelector",
    "ServedModelSpec",
    "SftSpec",
    "SqlSpec",
    "Stage",
    "StorageOptions",
    "StorageSpec",
    "CACHE_MOUNT",
    "CacheVolumeSpec",
    "TeacherSpec",
    "TokenPrice",
    "TrainingSpec",
    "check_regex",
    "check_scheme",
    "parse_scorer_spec",
    "validate_scorer_list",
]
