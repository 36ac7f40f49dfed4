"""Label-free scorers for TAO, shaped like TRL reward functions.

A scorer is a callable `scorer(prompts, completions, **kwargs) -> list[float | None]`: completions
of one prompt are consecutive, extra columns of the prompt record arrive as kwargs (one entry per
completion), and None means "no judgement". Scorers are built from the `scorers:` list of a TAOJob:

```python
>>> from tao_trainer.scorers import build_scorers, score_all
>>> scorers = build_scorers([
...     {"type": "majority", "extract": r"<(\\d+)>"},
...     {"type": "regex", "pattern": r"<\\d+>"},
... ])
>>> score_all(scorers, ["5+7="] * 3, ["<12>", "<12>", "13"]).total
[2.0, 2.0, 0.0]

```

Modules: `base` (the Scorer base class: a scorer implements `_detailed`, the rest derives from it), one
module per family (`majority`, `regex`, `json_check`, `function`, `judge`, `reward_model`, `sql`,
`python_tests`; `verdicts` reads the judge's replies, `code` and `sandbox` serve the last two), `registry`
(type name -> scorer) and `combine`. The specs live in `tao_trainer.spec`; the judge's HTTP client in
`tao_trainer.openai_client`.
"""

from tao_trainer.spec import (
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
    ScorerSpecList,
    SqlSpec,
    parse_scorer_spec,
    validate_scorer_list,
)

from .base import Score, Scorer, ScorerError, completion_text, group_spans
from .code import extract_code
from .combine import (
    ScoredBatch,
    as_reward_funcs,
    combine_scores,
    compose,
    needs_combined,
    normalize_values,
    score_against_all,
    score_all,
    stats_counts,
)
from .function import FunctionScorer, load_function
from .json_check import JsonScorer
from .judge import JudgeScorer
from .majority import MajorityScorer
from .python_tests import PythonTestsScorer
from .regex import RegexScorer
from .registry import SCORER_TYPES, build_scorer, build_scorers
from .reward_model import RewardModelScorer
from .sql import SqlScorer

__all__ = [
    "BUILTIN_SCORER_TYPES",
    "SCORER_TYPES",
    "SCORER_UNION_TAGS",
    "AnyScorerSpec",
    "CustomSpec",
    "FieldCheck",
    "FunctionScorer",
    "JsonScorer",
    "JsonSpec",
    "JudgeScorer",
    "JudgeSpec",
    "MajorityScorer",
    "MajoritySpec",
    "PythonSpec",
    "PythonTestsScorer",
    "PythonTestsSpec",
    "RegexScorer",
    "RegexSpec",
    "RewardModelScorer",
    "RewardModelSpec",
    "Score",
    "ScoredBatch",
    "Scorer",
    "ScorerError",
    "ScorerSpec",
    "ScorerSpecList",
    "SqlScorer",
    "SqlSpec",
    "as_reward_funcs",
    "build_scorer",
    "build_scorers",
    "combine_scores",
    "completion_text",
    "compose",
    "extract_code",
    "group_spans",
    "load_function",
    "needs_combined",
    "normalize_values",
    "parse_scorer_spec",
    "score_against_all",
    "score_all",
    "stats_counts",
    "validate_scorer_list",
]
