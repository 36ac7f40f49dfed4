"""Hostile manifests: each is refused with a message naming the file or field, fast and without a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tao_operator.api import SpecError, load_taojob_file, parse_taojob

VALID: dict[str, Any] = {
    "apiVersion": "tao.dev/v1alpha1",
    "kind": "TAOJob",
    "metadata": {"name": "demo"},
    "spec": {
        "model": {"uri": "s3://models/base"},
        "prompts": {"uri": "s3://data/prompts/"},
        "storage": {"uri": "s3://runs"},
        "scoring": {"scorers": [{"type": "majority", "extract": r"(\d+)$"}]},
    },
}


def changed(path: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    node: Any = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return doc


# Documents that parse as YAML but must be refused: (field path, value, what the message says).
BAD_FIELDS = [
    ("spec.evaluation.minImprovement", float("inf"), "spec.evaluation.minImprovement: inf is not a finite"),
    ("spec.generation.temperature", float("nan"), "spec.generation.temperature: nan is not a finite"),
    ("spec.pods.default.resources", {"limits": {"memory": float("-inf")}}, "-inf is not a finite number"),
    (
        "spec.generation.maxNewTokens",
        10**12,
        "spec.generation.maxNewTokens: Input should be less than or equal",
    ),
    ("spec.generation.candidates", 5000, "spec.generation.candidates: Input should be less than or equal"),
    ("spec.generation.batchSize", 10**9, "spec.generation.batchSize"),
    ("spec.training.maxLength", 10**9, "spec.training.maxLength"),
    ("spec.training.epochs", 1e9, "spec.training.epochs"),
    ("spec.prompts.maxPerRound", 10**12, "spec.prompts.maxPerRound"),
    ("spec.prompts.maxLineBytes", 1 << 40, "spec.prompts.maxLineBytes"),
    ("spec.serving.replicas", 100_000, "spec.serving.replicas"),
    ("spec.serving.capture.maxBuffer", 10**10, "spec.serving.capture.maxBuffer"),
    ("spec.pods.train.gpus", 4096, "spec.pods.train.gpus"),
    ("spec.pods.default.resources", {"limits": {"memory": "lots"}}, "is not a Kubernetes quantity"),
    ("spec.pods.default.resources", {"limitz": {}}, "unknown keys ['limitz']"),
    ("spec.pods.default.resources", {"limits": "8Gi"}, "resources.limits must be a mapping"),
    ("spec.prompts.uri", "file://../../etc/", "must not contain '.' or '..' path segments"),
    ("spec.prompts.uri", "s3://b/../../other/", "must not contain '.' or '..' path segments"),
    ("spec.storage.uri", "s3://runs/./x", "must not contain '.' or '..'"),
    ("spec.model.uri", "file://relative/model", "needs an absolute path"),
    ("spec.model.uri", "hf://org/../name", "must not contain '.' or '..'"),
    ("spec.storage.uri", "s3:///no-bucket", "needs a bucket name"),
    ("spec.prompts.uri", "s3://b/p\n/x", "control characters"),
    ("spec.serving.capture.uri", "s3://b/p/../../x/", "serving.capture.uri"),
    ("spec.serving.args", ["--x"] * 1000, "spec.serving.args"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), BAD_FIELDS, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD_FIELDS]
)
def test_absurd_or_hostile_values_are_refused_naming_the_field(
    path: str, value: object, message: str
) -> None:
    with pytest.raises(SpecError) as err:
        parse_taojob(changed(path, value))
    assert message in str(err.value), str(err.value)


def test_nesting_from_the_api_server_is_refused_without_recursion() -> None:
    deep: object = 1
    for _ in range(50_000):
        deep = [deep]
    with pytest.raises(SpecError, match="nested more than 64 levels"):
        parse_taojob(changed("spec.pods.default.affinity", {"x": deep}))


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)
# Files that cannot be read as a manifest: (bytes, what the message says).
BAD_FILES = {
    "alias bomb": (ALIAS_BOMB.encode(), "YAML aliases (*a) are not accepted"),
    "a single alias": (yaml.safe_dump(VALID).encode() + b"x: &v 1\ny: *v\n", "YAML aliases (*v)"),
    "invalid utf-8": (yaml.safe_dump(VALID).encode().replace(b"demo", b"d\xffmo"), "not valid UTF-8 at byte"),
    "utf-16": (yaml.safe_dump(VALID).encode("utf-16"), "not valid UTF-8 at byte 0"),
    "deep flow nesting": (b"kind: TAOJob\nspec: " + b"[" * 100_000, "nested more than 64 levels deep"),
    "deep block nesting": (
        b"kind: TAOJob\n" + b"".join(b"  " * i + b"k:\n" for i in range(200)),
        "nested more than 64 levels deep",
    ),
    "NaN": (
        yaml.safe_dump(changed("spec.generation.topP", 0.5)).encode().replace(b"0.5", b".nan"),
        "nan is not",
    ),
    "huge file": (b"# " + b"x" * (5 << 20) + b"\n", "larger than 4 MiB"),
    "python tag": (b"kind: TAOJob\nx: !!python/object/apply:os.system [echo]\n", "not valid YAML"),
    "not a mapping": (b"- kind: TAOJob\n", "expected exactly one document of kind TAOJob"),
    "bad syntax": (b"kind: TAOJob\nspec: {\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    data, message = BAD_FILES[name]
    path = tmp_path / "job.yaml"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_taojob_file(str(path))
    assert time.perf_counter() - started < 5
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_a_valid_manifest_with_a_bom_and_anchors_but_no_alias_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(changed("spec.generation.maxNewTokens", 1_000_000)).replace("demo", "&n demo")
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_taojob_file(str(path)).spec.generation.max_new_tokens == 1_000_000


def test_tao_validate_prints_a_clean_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    done = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "YAML aliases" in output and "Traceback" not in output, output
