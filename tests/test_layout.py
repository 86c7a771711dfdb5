"""The package's layout holds: no import cycle, every dvc stage depends on all the code it runs, and
every stage of dvc.yaml is a declared command."""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

import grimp
import pytest
import yaml

from ilots.pipeline.cli import load_commands

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def graph() -> Any:
    return grimp.build_graph("ilots")


def test_no_module_imports_itself_back(graph: Any) -> None:
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a in graph.modules
            for b in graph.find_modules_directly_imported_by(a)
            if graph.find_shortest_chain(importer=b, imported=a)
        }
    )
    assert cycles == []


def _imports_of(function: Any, seen: set[str] | None = None) -> set[str]:
    """ilots modules imported by a function, and by the functions of its module it calls."""
    seen = seen if seen is not None else set()
    if function.__qualname__ in seen:
        return set()
    seen.add(function.__qualname__)
    module = inspect.getmodule(function)
    assert module is not None
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    top = ast.parse(inspect.getsource(module)).body  # the command module's own top-level imports
    found = {module.__name__} | {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    found = {m for m in found if m.startswith("ilots")}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ilots"):
            found.add(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called = getattr(module, node.func.id, None)
            if inspect.isfunction(called) and called.__module__ == module.__name__:
                found |= _imports_of(called, seen)
    return found


def _targets(node: Any) -> set[str]:
    """The ilots modules named by ``_target_`` in a config node (built by Hydra at run time)."""
    if isinstance(node, dict):
        found = {str(node["_target_"]).rsplit(".", 1)[0]} if "_target_" in node else set()
        for value in node.values():
            found |= _targets(value)
        return {m for m in found if m.startswith("ilots")}
    if isinstance(node, list):
        return set().union(*map(_targets, node)) if node else set()
    return set()


def test_every_stage_depends_on_each_folder_its_code_lives_in(graph: Any) -> None:
    commands = load_commands()
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in dvc["stages"].items():
        assert stage["cmd"].split()[:2] == ["ilots", name], f"stage {name} runs `ilots {name}`"
        command = commands[name]
        modules = _imports_of(command.run)
        for section in stage.get("params", []):
            modules |= _targets(params.get(section))
        code = set(modules)
        for module in modules - {command.run.__module__}:  # the command module: its imports above
            code |= graph.find_upstream_modules(module)
        folders = {"src/" + "/".join(m.split(".")[:2]) for m in code if m != "ilots"}
        deps = {d for d in stage["deps"] if isinstance(d, str) and d.startswith("src/")}
        assert folders <= deps, f"stage {name} misses {sorted(folders - deps)} in its deps"
        assert all((ROOT / d).is_dir() for d in deps), f"stage {name} lists code files, not folders"


def test_the_package_root_holds_no_code() -> None:
    """`ilots/__init__.py` is no stage's dependency: it must stay a docstring."""
    tree = ast.parse((ROOT / "src" / "ilots" / "__init__.py").read_text())
    assert all(isinstance(node, ast.Expr) for node in tree.body)
