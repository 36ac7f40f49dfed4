"""The TAOJob resource (tao.dev/v1alpha1): the single source of truth for its schema.

`tao run` and the operator both parse manifests with `parse_taojob`; the CRD is rendered from these models.
The loop settings themselves live in `tao_trainer.contract` because every stage reads them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from tao_trainer.contract import CamelModel, LoopSpec
from tao_trainer.scorers.specs import SCORER_UNION_TAGS

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


class TAOJobSpec(LoopSpec):
    """Desired state of a TAOJob: the loop, plus what only a cluster needs."""

    suspend: bool = Field(default=False, description="Start nothing new; running stage Jobs are suspended.")


class TAOJob(CamelModel):
    api_version: Literal["tao.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TAOJob"]
    metadata: ObjectMeta
    spec: TAOJobSpec
    status: dict[str, Any] | None = None


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
    try:
        return TAOJob.model_validate(doc)
    except ValidationError as err:
        raise SpecError(describe(err), source) from None


def resolve_local_paths(job: TAOJob, base_dir: Path) -> TAOJob:
    """Plain relative paths in a manifest refer to files beside it: make them absolute file:// URIs."""

    def fix(uri: str) -> str:
        if "://" in uri:
            return uri
        return (base_dir / uri).resolve().as_uri()

    spec = job.spec
    spec.model.uri = fix(spec.model.uri)
    spec.prompts.uri = fix(spec.prompts.uri)
    spec.storage.uri = fix(spec.storage.uri)
    if spec.generation.teacher is not None:
        spec.generation.teacher.uri = fix(spec.generation.teacher.uri)
    for scorer in [*spec.scoring.scorers, *(spec.evaluation.scorers or [])]:
        path = getattr(scorer, "path", None)
        if isinstance(path, str) and not Path(path).is_absolute():
            scorer.path = str((base_dir / path).resolve())
    return job


def load_taojob_file(path: str) -> TAOJob:
    with open(path, encoding="utf-8") as f:
        try:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise SpecError([f"not valid YAML: {e}"], path) from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise SpecError([f"expected exactly one document of kind {KIND}, found {len(jobs)}"], path)
    return resolve_local_paths(parse_taojob(jobs[0], path), Path(path).resolve().parent)
