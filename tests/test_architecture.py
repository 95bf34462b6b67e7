"""The shape of the codebase: imports run downward, family knowledge stays in the family files.

Read from the source with ``ast`` (module- and function-level imports alike), so a new import that
breaks a rule fails here before anyone reads the diff.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nash_ds"
STAGE_HELPERS = {"nash_ds.stages", "nash_ds.stages.common"}
FAMILY_FILES = {"nash_ds/models/t5.py", "nash_ds/models/bart.py", "nash_ds/models/mt5.py", "nash_ds/models/mbart.py"}
FAMILY_LITERALS = {"t5", "bart", "mt5", "mbart"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (``from x import y`` counts y when y is a module)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("nash_ds") and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    # importing a package runs its __init__: an edge to "nash_ds.models.t5" implies one to "nash_ds.models"
    graph = {}
    for name, path in mods.items():
        edges = _imports(name, path, known)
        edges |= {p for e in edges for p in _parents(e) if p in known and p != name and not name.startswith(p + ".")}
        graph[name] = edges - {"nash_ds"}
    return graph


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _is_stage(name: str) -> bool:
    return name.startswith("nash_ds.stages.") and name not in STAGE_HELPERS


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_config_imports_nothing_of_the_project():
    assert _graph()["nash_ds.config"] == set()


def test_no_stage_imports_another_stage_and_nothing_below_imports_a_stage():
    graph = _graph()
    for name, edges in graph.items():
        stages = {e for e in edges if _is_stage(e)}
        if name in ("nash_ds.cli", "nash_ds.stages.pipeline"):
            continue  # the dispatcher and the pipeline run stages
        assert not stages, f"{name} imports the stage(s) {sorted(stages)}"


def test_the_library_never_imports_the_test_and_bench_helpers():
    """nash_ds/testing.py (run.py on N ranks, random model directories) serves tests/ and bench/ only."""
    graph = _graph()
    assert not [name for name, edges in graph.items() if "nash_ds.testing" in edges]


def test_family_names_appear_only_in_the_family_files():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        if rel in FAMILY_FILES or rel.startswith("nash_ds/models/remote/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in FAMILY_LITERALS:
                offenders.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


def test_the_checker_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "nash_ds.models.pruning" in graph["nash_ds.stages.finalize"]  # imported inside a function
    assert "nash_ds.models.base" in graph["nash_ds.models.t5"]  # relative import


MASK_INTERNALS = {"maskset", "masks", "gates", "log_alpha"}
"""Attributes of ``masks.Masking`` / ``MaskSet`` / the prune module that only nash_ds/masks.py may reach."""


def _mask_internals(source: str, where: str) -> list[str]:
    """Places in ``source`` that reach past ``masks.Masking``: an attribute of ``MASK_INTERNALS``, a string that
    starts with a state-dict prefix of the prune module (``masks.STUDENT_PREFIX``, ``MASKS_PREFIX``), or an import
    from nash_ds.masks of anything but ``Masking``."""
    from nash_ds.masks import MASKS_PREFIX, STUDENT_PREFIX

    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in MASK_INTERNALS:
            out.append(f"{where}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
                (STUDENT_PREFIX, MASKS_PREFIX)):
            out.append(f"{where}:{node.lineno} {node.value!r}")
        elif isinstance(node, ast.ImportFrom) and node.module == "nash_ds.masks":
            out += [f"{where}:{node.lineno} import {a.name}" for a in node.names if a.name != "Masking"]
    return out


def test_stages_reach_the_masks_only_through_masking():
    """The prune stage and the finalizer get logs, report entries, parameters and checkpoint prefixes from
    ``masks.Masking``; a stage that reads the MaskSet or names a mask key prefix again fails here."""
    offenders = []
    for path in sorted((PACKAGE / "stages").rglob("*.py")):
        offenders += _mask_internals(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not offenders, offenders


def test_the_mask_checker_sees_what_it_forbids():
    snippet = ("from nash_ds.masks import Masking, MaskSet\n"
               "a = engine.module.masks\n"
               "b = masking.maskset.summary()\n"
               "c = m.gates['encoder_heads'].log_alpha\n"
               "d = [k for k in state if k.startswith('masks.')]\n"
               "e = 'student.shared.weight'\n"
               "f = masking.step_logs()\n")
    found = sorted(_mask_internals(snippet, "x"))
    assert found == ["x:1 import MaskSet", "x:2 .masks", "x:3 .maskset", "x:4 .gates", "x:4 .log_alpha",
                     "x:5 'masks.'", "x:6 'student.shared.weight'"], found
