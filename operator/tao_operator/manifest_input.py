"""Reading a manifest that may be hostile: bounded size, UTF-8 only, no YAML aliases, bounded nesting, finite numbers.

`tao validate`, `tao run` and the operator's admission all go through `api.load_taojob_file` or
`api.parse_taojob`, which call these and turn the problems into a `SpecError` naming the file or field:

- a file over ``MAX_MANIFEST_BYTES`` (4 MiB; the API server stores objects of about 1.5 MiB at most);
- bytes that are not UTF-8 (the offset is named);
- YAML aliases (``*name``): a manifest never needs them and an alias bomb expands into gigabytes;
- nesting deeper than ``MAX_DEPTH`` levels;
- ``.nan``, ``.inf`` and ``-.inf`` anywhere (the field is named; no bound check would catch NaN).

`check_resources` validates pod ``resources`` (otherwise a free-form Kubernetes object) at admission.

>>> document_problems({"spec": {"evaluation": {"minImprovement": float("inf")}}})
['spec.evaluation.minImprovement: inf is not a finite number']
>>> parse_yaml("a: &x [1]\\nb: *x\\n")[1]
['not valid YAML: YAML aliases (*x) are not accepted: write the value out (line 2, column 4)']
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import yaml

MAX_MANIFEST_BYTES = 4 << 20
MAX_DEPTH = 64


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with a nesting bound (checked before Python's recursion limit)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML aliases (*{event.anchor}) are not accepted: write the value out "
                f"(line {mark.line + 1}, column {mark.column + 1})",
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep (line {mark.line + 1})"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml(text: str) -> tuple[list[Any], list[str]]:
    """(documents, problems): the documents only when there is no problem."""
    try:
        loader = _ManifestLoader(text)
        try:
            docs: list[Any] = []
            while loader.check_data():
                doc = loader.get_data()
                if doc is not None:
                    docs.append(doc)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return [], [f"not valid YAML: {' '.join(str(exc).split())}"]
    except RecursionError:
        return [], [f"not valid YAML: nested more than {MAX_DEPTH} levels deep"]
    return docs, []


def read_manifest(path: str) -> tuple[list[Any], list[str]]:
    """The YAML documents of a manifest file (``-``: standard input), or the problems that keep it from being
    read."""
    if path == "-":
        data = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        return [], [f"file is larger than {MAX_MANIFEST_BYTES >> 20} MiB; a TAOJob manifest is a few KiB"]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [f"not valid UTF-8 at byte {exc.start}: a manifest must be UTF-8 text"]
    return parse_yaml(text)


def document_problems(doc: Any) -> list[str]:
    """Non-finite numbers (by field path) and nesting over ``MAX_DEPTH``, without recursion."""
    problems: list[str] = []
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack and len(problems) < 20:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            problems.append(f"{path or '(top level)'}: nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{path or '(top level)'}: {value} is not a finite number")
        elif isinstance(value, dict):
            for key, item in reversed(list(value.items())):
                stack.append((item, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(value, list):
            for index in reversed(range(len(value))):
                stack.append((value[index], f"{path}[{index}]", depth + 1))
    return problems


_QUANTITY = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?")
_RESOURCE_NAME = re.compile(r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?")


def check_resources(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Container resources shaped as Kubernetes takes them: limits/requests of quantities (claims as-is).

    >>> check_resources({"limits": {"memory": "8Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "500m"}})
    {'limits': {'memory': '8Gi', 'nvidia.com/gpu': 1}, 'requests': {'cpu': '500m'}}
    >>> check_resources({"limits": {"memory": "lots"}})
    Traceback (most recent call last):
    ...
    ValueError: resources.limits.memory: 'lots' is not a Kubernetes quantity (e.g. 500m, 8Gi, 2)
    """
    if value is None:
        return None
    unknown = sorted(set(value) - {"limits", "requests", "claims"})
    if unknown:
        raise ValueError(f"resources: unknown keys {unknown}; allowed: limits, requests, claims")
    for part in ("limits", "requests"):
        amounts = value.get(part)
        if amounts is None:
            continue
        if not isinstance(amounts, dict):
            raise ValueError(f"resources.{part} must be a mapping of resource name to quantity")
        for name, amount in amounts.items():
            if not isinstance(name, str) or len(name) > 253 or not _RESOURCE_NAME.fullmatch(name):
                raise ValueError(f"resources.{part}: {name!r} is not a resource name")
            text = str(amount) if isinstance(amount, int | float) and not isinstance(amount, bool) else amount
            if not isinstance(text, str) or len(text) > 64 or not _QUANTITY.fullmatch(text):
                raise ValueError(
                    f"resources.{part}.{name}: {amount!r} is not a Kubernetes quantity (e.g. 500m, 8Gi, 2)"
                )
    return value
