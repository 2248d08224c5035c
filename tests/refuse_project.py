"""Python source that makes a process refuse this project's packages: the venv has sae-pipeline installed in
editable mode, so taking the checkout off sys.path is not enough to show that a logged model bundles its code."""

REFUSE_PROJECT = """
import importlib.abc, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"pipeline", "sae", "flows"}:
            raise ModuleNotFoundError(f"No module named {name!r} (refused: the project is not installed here)")
        return None

sys.meta_path.insert(0, Refuse())
"""
