"""The structure's promises, checked on the source tree (docs: ARCHITECTURE.md, "Boundaries" and "Layout").

- The operator never loads torch, transformers, trl, peft, vllm, datasets or boto3/botocore, nor any scorer
  implementation, stage or storage backend: it imports the spec, the stage contract and the layout only. Checked
  by importing every module of `tao_operator` in a fresh interpreter and reading `sys.modules`; a failure names
  the chain of module-level imports that pulled each one in.
- No import cycles among the modules of `tao_operator` and `tao_trainer` (module-level imports, read with `ast`;
  imports inside functions and under `if TYPE_CHECKING:` do not run at import time and are left out).
- No hand-written source file over 500 lines in operator/, trainer_image/ or benchmarks/ (tests and generated
  files aside): split at the seams when one grows.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "tao_operator": ROOT / "operator" / "tao_operator",
    "tao_trainer": ROOT / "trainer_image" / "tao_trainer",
}

# Never in the operator's process (the operator image has none of them; the boundary keeps it slim).
FORBIDDEN_LIBRARIES = ["torch", "transformers", "trl", "peft", "vllm", "datasets", "boto3", "botocore"]
FORBIDDEN_TRAINER_PARTS = ["tao_trainer.scorers", "tao_trainer.stages", "tao_trainer.storage"]
# `tao run`'s embedded executor reads and writes the run's storage itself (boto3 still only when an s3:// URI
# is used); the operator's process never imports it.
EMBEDDED_EXECUTOR = "tao_operator.local"

MAX_LINES = 500
SOURCE_DIRS = ["operator", "trainer_image", "benchmarks"]
SOURCE_SUFFIXES = {".py", ".sh", ".lua"}
SOURCE_NAMES = {"Dockerfile"}


def module_files(package: str) -> Iterator[tuple[str, Path]]:
    """(dotted module name, file) of every module of a package, subpackages included."""
    base = PACKAGES[package]
    for path in sorted(base.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = [package, *path.relative_to(base).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


# --------------------------------------------------------------------------------------------- (a) the operator


_PROBE = textwrap.dedent(
    """
    import importlib, json, sys, traceback

    libraries, parts, modules, paths = json.loads(sys.argv[1])
    sys.path[:0] = paths

    def group(name):
        top = name.split(".")[0]
        if top in libraries:
            return top
        return next((p for p in parts if name == p or name.startswith(p + ".")), None)

    already = sorted({group(n) for n in sys.modules if group(n)})
    chains = {}

    class Tracer:
        # Sees every import request first; records who asked for the first module of each forbidden group.
        def find_spec(self, name, path=None, target=None):
            g = group(name)
            if g and g not in chains:
                stack, frame = [], sys._getframe(1)
                while frame is not None:
                    if frame.f_code.co_name == "<module>":
                        stack.append(frame.f_globals.get("__name__", "?"))
                    frame = frame.f_back
                chains[g] = [m for m in reversed(stack) if m != "__main__"] + [name]
            return None

    sys.meta_path.insert(0, Tracer())
    errors = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except BaseException:
            errors[module] = traceback.format_exc(limit=3)
    loaded = sorted({group(n) for n in sys.modules if group(n)})
    print(json.dumps({"already": already, "loaded": loaded, "chains": chains, "errors": errors}))
    """
)


def _probe(modules: list[str], trainer_parts: list[str]) -> dict[str, Any]:
    paths = [str(ROOT / "operator"), str(ROOT / "trainer_image")]
    arg = json.dumps([FORBIDDEN_LIBRARIES, trainer_parts, modules, paths])
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, arg],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["already"], f"loaded before any import (a .pth file?): {report['already']}"
    assert not report["errors"], "modules of tao_operator that fail to import:\n" + "\n".join(
        f"{m}:\n{tb}" for m, tb in report["errors"].items()
    )
    return report


def _loaded_lines(report: dict[str, Any]) -> str:
    return "\n".join(
        f"{group}: {' -> '.join(report['chains'].get(group, ['?']))}" for group in report["loaded"]
    )


def test_importing_the_operator_loads_no_heavy_library_nor_trainer_internals() -> None:
    modules = [name for name, _ in module_files("tao_operator") if name != EMBEDDED_EXECUTOR]
    assert len(modules) > 5
    report = _probe(modules, FORBIDDEN_TRAINER_PARTS)
    assert not report["loaded"], "importing tao_operator loads what the operator must not:\n" + _loaded_lines(
        report
    )


def test_the_embedded_executor_loads_no_heavy_library_nor_stage_nor_scorer() -> None:
    report = _probe([EMBEDDED_EXECUTOR], ["tao_trainer.scorers", "tao_trainer.stages"])
    assert not report["loaded"], f"importing {EMBEDDED_EXECUTOR} loads:\n" + _loaded_lines(report)


# --------------------------------------------------------------------------------------------- (b) no cycles


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: top level, or inside top-level if/try/with."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _module_level_imports(block)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _module_level_imports(node.body)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports at module level (`from pkg import sub` counts as pkg.sub when
    sub is a module, else as pkg itself, i.e. its __init__)."""
    files = {name: path for package in PACKAGES for name, path in module_files(package)}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            for target in targets:
                # `import a.b.c` binds a name only; the module it loads is the longest project module named.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component with more than one
    module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # Shortest way back to start inside the component (breadth-first).
        previous: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in seen:
                        seen.add(w)
                        previous[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        path = [start]
        v = found or start
        back = []
        while v != start:
            back.append(v)
            v = previous[v]
        cycles.append([*path, *reversed(back), start])
    return cycles


def test_find_cycles_finds_them() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_module_level_imports_only() -> None:
    graph = import_graph()
    assert "tao_operator.crd_schema" in graph["tao_operator.crd"]
    assert "tao_operator.api" in graph["tao_operator.crd"]
    # cli imports local, handlers... inside functions only: those are not edges.
    assert "tao_operator.local" not in graph["tao_operator.cli"]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among the project's modules (module-level imports):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles
    )


# --------------------------------------------------------------------------------------------- (c) file sizes


def _is_test(path: Path) -> bool:
    return (
        "tests" in path.parts
        or path.name.startswith("test_")
        or path.name.endswith("_test.py")
        or path.name == "conftest.py"
    )


def _is_generated(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as f:
        head = "".join(f.readline() for _ in range(5)).lower()
    return "generated" in head and "do not edit" in head


def hand_written_sources() -> Iterator[Path]:
    for top in SOURCE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            relative = path.relative_to(ROOT).parts
            if any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in relative):
                continue
            if not path.is_file() or not (path.suffix in SOURCE_SUFFIXES or path.name in SOURCE_NAMES):
                continue
            if _is_test(path) or _is_generated(path):
                continue
            yield path


def test_no_hand_written_source_file_over_500_lines() -> None:
    sources = list(hand_written_sources())
    assert len(sources) > 20
    too_long = {}
    for path in sources:
        with path.open(encoding="utf-8", errors="replace") as f:
            count = sum(1 for _ in f)
        if count > MAX_LINES:
            too_long[str(path.relative_to(ROOT))] = count
    assert not too_long, f"over {MAX_LINES} lines (split at a seam):\n" + "\n".join(
        f"{p}: {n}" for p, n in sorted(too_long.items(), key=lambda kv: -kv[1])
    )


def test_every_package_is_installed_by_a_plain_pip_install() -> None:
    # The images install with `pip install /src[...]`, not in editable mode: a subpackage missing from
    # pyproject.toml's list would be missing from the trainer or operator image.
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join((name, *init.parent.relative_to(root).parts))
        for name, root in PACKAGES.items()
        for init in root.rglob("__init__.py")
    }
    assert found == listed
