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

Modules: `specs` (the CRD models), `base` (the Scorer base class), one module per family
(`majority`, `regex`, `json_check`, `function`), `registry` (type name -> scorer) and `combine`.
"""

from .base import Score, Scorer, ScorerError, completion_text, group_spans
from .combine import ScoredBatch, as_reward_funcs, combine_scores, score_against_all, score_all
from .function import FunctionScorer, load_function
from .json_check import JsonScorer
from .majority import MajorityScorer
from .regex import RegexScorer
from .registry import SCORER_TYPES, build_scorer, build_scorers
from .specs import (
    BUILTIN_SCORER_TYPES,
    SCORER_UNION_TAGS,
    AnyScorerSpec,
    CustomSpec,
    JsonSpec,
    MajoritySpec,
    PythonSpec,
    RegexSpec,
    ScorerSpec,
    ScorerSpecList,
    parse_scorer_spec,
    validate_scorer_list,
)

__all__ = [
    "BUILTIN_SCORER_TYPES",
    "SCORER_TYPES",
    "SCORER_UNION_TAGS",
    "AnyScorerSpec",
    "CustomSpec",
    "FunctionScorer",
    "JsonScorer",
    "JsonSpec",
    "MajorityScorer",
    "MajoritySpec",
    "PythonSpec",
    "RegexScorer",
    "RegexSpec",
    "Score",
    "ScoredBatch",
    "Scorer",
    "ScorerError",
    "ScorerSpec",
    "ScorerSpecList",
    "as_reward_funcs",
    "build_scorer",
    "build_scorers",
    "combine_scores",
    "completion_text",
    "group_spans",
    "load_function",
    "parse_scorer_spec",
    "score_against_all",
    "score_all",
    "validate_scorer_list",
]
