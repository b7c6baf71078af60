"""The package's layout as contracts: which stage may import which, read from the source.

Stages in pipeline order: runtime (running a job) < data < train < infer < evaluate < report;
settings and config are shared by all, toy is the 3D-properties side study. A module may import
its own subpackage, runtime, settings/config, and the stages its contracts below allow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dppo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every dppo module ``path`` imports, at any level (a function's lazy import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dppo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dppo"):
            # `from dppo.x import y` imports dppo.x.y when that is a module, else dppo.x
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and f"{module}.__init__" not in MODULES
                                          and (PACKAGE / parts[1]).is_dir()) else parts[-1]


def imported_stages(prefix: str) -> dict[str, set[str]]:
    """For each module under dppo.<prefix>: the other stages it imports."""
    return {m: {stage(t) for t in targets} - {prefix}
            for m, targets in GRAPH.items() if stage(m) == prefix}


def test_the_graph_is_read_from_every_module():
    assert len(MODULES) > 30 and "dppo.train.preference" in MODULES
    assert "dppo.train.losses" in GRAPH["dppo.train.preference"]
    assert all(target in MODULES for targets in GRAPH.values() for target in targets), "an import names no module"


def test_the_module_import_graph_has_no_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


SHARED = {"settings", "config", "runtime", "dppo"}
ALLOWED = {  # stage -> the other stages it may import (besides SHARED)
    "runtime": set(),
    "data": set(),
    "train": {"data"},
    "infer": {"data", "train"},
    "evaluate": {"data"},  # data: the embedded task's ground-truth reward
    "report": {"evaluate", "data"},  # data: reading stats.json
    "toy": {"train", "report"},
    "study": {"evaluate", "report"},  # dppo.study runs the worlds and writes the study
}


@pytest.mark.parametrize("prefix", sorted(ALLOWED))
def test_each_stage_imports_only_what_it_may(prefix):
    allowed = ALLOWED[prefix] | SHARED
    if prefix == "runtime":
        allowed = {"settings", "config", "dppo"}  # runtime imports no stage
    wrong = {m: sorted(s - allowed) for m, s in imported_stages(prefix).items() if s - allowed}
    assert not wrong, f"{prefix} may import {sorted(allowed)} only: {wrong}"


def test_settings_and_config_import_no_stage():
    top = {"dppo.settings", "dppo.schema", "dppo.config", "dppo"}
    for name in top - {"dppo"}:
        assert GRAPH[name] <= top, (name, GRAPH[name])


def test_evaluate_and_report_run_without_torch_or_transformers():
    # a real import of every module of both stages, in a fresh interpreter
    names = sorted(m for m in MODULES if stage(m) in ("evaluate", "report"))
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names)
            + "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            + "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(names) >= 9
