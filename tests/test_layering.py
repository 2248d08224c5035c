"""Imports point one way: flows -> pipeline -> sae; mlflow, prefect and lightning stay in their places."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "sae": {"pipeline", "flows", "mlflow", "prefect", "lightning", "sklearn"},
    "pipeline": {"flows", "prefect", "lightning"},
    "flows": {"lightning"},
}
MLFLOW_MODULES = {"tracking.py", "registry.py", "pyfunc.py", "encode.py", "transformer.py", "mlflow_setup.py"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downstream(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_tracking_modules_of_pipeline_import_mlflow():
    importers = {p.name for p in (ROOT / "pipeline").rglob("*.py") if "mlflow" in _imports(p)}
    assert importers <= MLFLOW_MODULES, importers - MLFLOW_MODULES
