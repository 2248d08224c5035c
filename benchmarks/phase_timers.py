"""The timers behind ``run_floor.py``'s breakdown: one ``sae-pipeline`` command run in this process, its wall time
split by phase (exclusive per thread), its imports by the library that pulled them in, its garbage collections
apart. ``run_floor.py --child REPORT [--phases] -- COMMAND...`` runs ``child`` in a fresh process.
"""

from __future__ import annotations

import gc
import json
import re
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

EPOCH_PART = "training epochs (Lightning's epoch loop)"
REST = "the rest: CLI, config, start-up steps, printing, code no timer covers"

# (module, attribute or Class.attribute or Class.* or *, part): installed as each module is imported.
PHASES = (
    ("flows.cli", "_run", REST),
    ("pipeline.app.preflight", "check_run", "preflight: data read and checks"),
    ("prefect.server.api.server", "SubprocessASGIServer.start", "Prefect: temporary server start"),
    ("flows.server_guard", "wait_for_temporary_server", "Prefect: wait for the temporary server"),
    ("prefect.flows", "Flow.__call__", "Prefect: flow and task glue"),
    ("flows.artifacts", "*", "Prefect: artifacts and flow-run tags"),
    ("pipeline.tracking.store", "*", "MLflow: store, client"),
    ("pipeline.tracking.runs", "MlflowTracking.*", "MLflow: runs and logging"),
    ("pipeline.tracking.epoch_logger", "BufferedMLFlowLogger.*", "MLflow: runs and logging"),
    ("pipeline.tracking.stale", "*", "MLflow: runs and logging"),
    ("pipeline.tracking.describe", "*", "MLflow: runs and logging"),
    ("pipeline.tracking.run_files", "*", "MLflow: runs and logging"),
    ("pipeline.tracking.pyfunc", "*", "model logging"),
    ("mlflow.models.utils", "_validate_serving_input", "model logging: serving-input check"),
    ("mlflow.pyfunc", "_validate_prediction_input", "model logging: signature check"),
    ("pipeline.tracking.registry", "*", "registry"),
    ("pipeline.tracking.versions", "*", "registry"),
    ("pipeline.tracking.plots", "*", "plots"),
    ("pipeline.evaluation.layer_probes", "probe_accuracies", "probes"),
    ("pipeline.evaluation.layer_probes", "probe_test_accuracy", "probes"),
    ("pipeline.run.layer_store", "*", "layer cache"),
    ("pipeline.run.finetune_store", "*", "fine-tuning cache"),
    ("pipeline.run.greedy", "train_autoencoder", "training: Lightning set-up around the epochs"),
    ("pytorch_lightning.loops.fit_loop", "_FitLoop.advance", EPOCH_PART),
    ("pipeline.run.greedy", "finetune_stack", "fine-tuning: softmax, accuracies, set-up"),
    ("pipeline.run.greedy", "encode_layer", "codes and test metrics"),
    ("pipeline.run.greedy", "stack_encoder", "codes and test metrics"),
)
EPOCHS_ONLY = tuple(p for p in PHASES if p[2] == EPOCH_PART)
PROJECT = {"pipeline", "flows", "sae"}


class Timers:
    """Exclusive wall time per (thread, part): time inside a wrapped call or import, minus what nests in it."""

    def __init__(self, imports: bool) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.local = threading.local()
        self.imports = imports
        self.pending: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.missing: list[str] = []  # phases whose function this code no longer has

    def _thread(self) -> str:
        thread = threading.current_thread()
        return "main" if thread is threading.main_thread() else re.sub(r"[-_]?\d+(_\d+)?$", "", thread.name)

    def timed(self, part: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        stack = self.local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[(self._thread(), part)] += elapsed - stack.pop()
            if stack:
                stack[-1] += elapsed

    def wrap(self, owner: Any, name: str, part: str) -> None:
        real = vars(owner).get(name)
        if real is None or isinstance(real, staticmethod | classmethod | property | type) or not callable(real):
            return
        timers = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return timers.timed(part, real, *args, **kwargs)

        wrapper.__wrapped__ = real  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(real, "__name__", name)
        setattr(owner, name, wrapper)

    def install(self, phases: tuple[tuple[str, str, str], ...]) -> None:
        """Wrap each phase's function once its module is imported (and those already imported now)."""
        for module, attr, part in phases:
            self.pending[module].append((attr, part))
        import importlib._bootstrap as bootstrap

        real = bootstrap._find_and_load

        def find_and_load(name: str, import_: Any) -> Any:
            module = self._import(real, name, import_) if self.imports else real(name, import_)
            if name in self.pending:
                self._wrap_module(module, self.pending.pop(name))
            return module

        bootstrap._find_and_load = find_and_load
        if self.imports:
            gc.callbacks.append(self._collecting)
        for name in [n for n in self.pending if n in sys.modules]:
            self._wrap_module(sys.modules[name], self.pending.pop(name))

    def _import(self, real: Callable[..., Any], name: str, import_: Any) -> Any:
        """Time an import as part of the outermost third-party import under way on this thread: what
        ``import pytorch_lightning`` loads (torchmetrics, SciPy...) counts as Lightning's, unless already loaded."""
        top = name.partition(".")[0]
        if top in PROJECT:
            return self.timed("import: sae-pipeline's own modules", real, name, import_)
        root = self.local.__dict__.get("root")
        if root is not None:
            return self.timed(f"import {root}", real, name, import_)
        self.local.root = top
        try:
            return self.timed(f"import {top}", real, name, import_)
        finally:
            self.local.root = None

    def _collecting(self, phase: str, info: dict[str, int]) -> None:
        """Python's cyclic garbage collections, timed as a part of their own (they run inside other parts)."""
        stack = self.local.__dict__.setdefault("stack", [])
        if phase == "start":
            stack.append(0.0)
            self.local.gc_start = time.perf_counter()
            return
        elapsed = time.perf_counter() - self.local.gc_start
        self.seconds[(self._thread(), "garbage collection")] += elapsed - stack.pop()
        if stack:
            stack[-1] += elapsed

    def _wrap_module(self, module: Any, attrs: list[tuple[str, str]]) -> None:
        for attr, part in attrs:
            owner, _, name = attr.rpartition(".")
            target = getattr(module, owner, None) if owner else module
            if target is None or (name != "*" and name not in vars(target)):
                self.missing.append(f"{module.__name__}.{attr}")
                continue
            names = [name] if name != "*" else [
                n for n, v in vars(target).items() if not n.startswith("__") and callable(v)
                and getattr(v, "__module__", None) == module.__name__ and not isinstance(v, type)]
            for n in names:
                self.wrap(target, n, part)


def child(out: Path, phases: bool, command: list[str]) -> int:
    """Run ``sae-pipeline <command>`` here, timed; write what was measured to ``out`` as JSON."""
    start = time.perf_counter()
    import atexit

    # Registered first, so it runs last: what the interpreter does at exit (Prefect stopping its temporary
    # server, workers flushing) is measured up to here.
    atexit.register(lambda: out.with_suffix(".exit").write_text(str(time.perf_counter() - start)))
    timers = Timers(imports=phases)
    timers.install(PHASES if phases else EPOCHS_ONLY)
    from flows.cli import main as cli_main

    try:
        code = timers.timed(REST, cli_main, command)
    finally:
        wall = time.perf_counter() - start
        parts: dict[str, dict[str, float]] = defaultdict(dict)
        for (thread, part), seconds in timers.seconds.items():
            parts[thread][part] = seconds
        out.write_text(json.dumps({"wall": wall, "parts": parts, "not timed": timers.missing}))
    return code
