"""Imports point one way: flows -> pipeline -> sae; mlflow, prefect and lightning stay in their places.

Every module of every package is walked (function-level imports included), so a new file cannot slip past.
"""

import ast
from pathlib import Path

import pytest

from tests import ROOT

PACKAGES = ("sae", "pipeline", "flows")
# Top-level import names each package may not use. Lightning is imported as `pytorch_lightning` here
# (mixing it with `lightning.pytorch` breaks isinstance checks), so both spellings are listed.
FORBIDDEN = {
    "sae": {"pipeline", "flows", "mlflow", "prefect", "sklearn", "lightning"},
    "pipeline": {"flows", "prefect", "lightning"},
    "flows": {"lightning", "pytorch_lightning"},
}
MLFLOW_HOME = ROOT / "pipeline" / "tracking"  # the only pipeline code that imports mlflow


def imports(path: Path) -> set[str]:
    """Top-level names of every absolute import anywhere in the module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_downstream(package):
    offenders = {str(p.relative_to(ROOT)): sorted(imports(p) & FORBIDDEN[package]) for p in modules(package)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_pipeline_tracking_imports_mlflow():
    importers = [p for p in modules("pipeline") if "mlflow" in imports(p)]
    assert importers, "the walk found no mlflow importer at all: it is not looking at the code"
    assert [str(p.relative_to(ROOT)) for p in importers if MLFLOW_HOME not in p.parents] == []


def test_the_walk_sees_lightning_and_relative_imports_are_absent(tmp_path):
    # The rule must be able to fail: a module importing pytorch_lightning inside a function is caught.
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import pytorch_lightning as pl\n    from mlflow import MlflowClient\n")
    assert imports(module) == {"pytorch_lightning", "mlflow"}
    assert "pytorch_lightning" in imports(ROOT / "sae" / "train.py")
    relative = [p for pkg in PACKAGES for p in modules(pkg)
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == [], "relative imports would hide from these rules; use absolute ones"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(files: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere (``from a import b`` counts a.b when b is a module)."""
    names = {module_name(p, root): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                               for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in names and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other round a circle (strongly connected, more than one)."""
    order, low, stack, found = {}, {}, [], []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in graph[node]:
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            group = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_pipeline_and_flows_have_no_import_cycle():
    graph = import_graph([p for package in ("pipeline", "flows") for p in modules(package)])
    assert len(graph) > 60, "the walk found too few modules: it is not looking at the code"
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = import_graph(sorted(package.glob("*.py")), root=tmp_path)
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]

