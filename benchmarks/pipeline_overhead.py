"""What do the Prefect flow and its cache cost, and save, on the default run?

Measures, in this process and in this order: (1) the same layers and fine-tuning trained by plain PyTorch
loops (same data, epochs, batch size, optimizer, learning rates; no Lightning, no tracking); (2) the flow
end to end on an empty cache (temporary Prefect server, MLflow tracking and registration into a temporary
sqlite store); (3) the flow again on the same config, reusing every layer from the cache.
Targets: (2) <= 1.25 x (1) + 15 s of fixed start-up; (3) < 20% of (2).

Real-size case (after the digits one; ``--only real`` runs it alone): what ``sae-pipeline run`` does
(``flows.startup.flow_session``: the preflight; the temporary server, the MLflow store and the raw-input probe
started on threads; then the flow) on ../shared/data/mnist-5k.npz (5,000 handwritten digits, 784 pixels;
skipped with a message when the file is absent), layers 784-200-200 with the default epochs and fine-tuning,
empty cache and a new tracking store. Its wall time is split, by timers wrapped around the functions that do
each part (exclusive: a part nested in another counts once, in the inner one), into layer training,
fine-tuning epochs, other fine-tuning work, codes, probes (the evaluation's wait for them), plots, tracking,
model logging, registry, the layer cache, data loading, the temporary Prefect server start (its import and
the wait for it) and the rest (Prefect's task and flow machinery and glue); work on other threads is printed
apart. Everything is imported before the clock starts, so the server start shows whole (the CLI imports the
flow's code meanwhile). Target: everything but layer training and fine-tuning epochs <= 15% of the wall time
without the server start.

    .venv/bin/python benchmarks/pipeline_overhead.py [--only digits|real] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile and tests: read when torch loads OpenMP
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import PipelineConfig, load_default_config  # noqa: E402
from pipeline.data.loading import load_data  # noqa: E402
from pipeline.evaluation.layer_probes import probe_accuracies  # noqa: E402
from pipeline.run.greedy import sae_config  # noqa: E402
from sae import SparseAutoencoder  # noqa: E402
from sae.classifier import StackClassifier, fit_softmax  # noqa: E402
from sae.stack import StackedEncoder  # noqa: E402

PLAIN_FACTOR, FIXED_SECONDS, CACHED_FRACTION = 1.25, 15.0, 0.20
MNIST = ROOT.parent / "shared" / "data" / "mnist-5k.npz"
OUTSIDE_TRAINING_TARGET = 0.15
TRAINING_PARTS = ("layer training", "fine-tuning epochs")
SERVER = "temporary Prefect server start"
# (module, factory, method, part): a method of the objects a factory returns (the fine-tuning Trainer's fit).
TIMED_RESULTS = (("pipeline.run.end_to_end", "quiet_trainer", "fit", "fine-tuning epochs"),)
# (module, attribute, part): the functions each part of the wall time is spent in.
TIMED = (
    ("pipeline.run.greedy", "train_autoencoder", "layer training"),
    ("pipeline.run.greedy", "encode_layer", "codes"),
    ("pipeline.run.greedy", "finetune_stack", "fine-tuning, other"),
    ("pipeline.run.greedy", "probe_accuracies", "probes"),  # on a thread while the models are logged: background
    ("pipeline.run.greedy", "evaluate_run", "probes"),  # exclusive: the wait for those probes, beyond the model logging
    ("pipeline.evaluation.layer_probes", "probe_test_accuracy", "each probe (on threads, summed)"),  # the raw one fitted ahead included
    ("pipeline.tracking.pyfunc", "warm_requirement_checks", "warm-ups (store thread)"),
    ("pipeline.tracking.plots", "*", "plots"),
    ("pipeline.tracking.runs.MlflowTracking", "*", "tracking"),
    ("pipeline.tracking.epoch_logger.BufferedMLFlowLogger", "*", "tracking"),
    ("pipeline.tracking.store", "create_sqlite_store", "MLflow database creation"),
    ("pipeline.tracking.runs", "log_encoder_model", "model logging"),
    ("pipeline.tracking.registry", "register_model", "registry"),
    ("pipeline.run.layer_store", "save_layer", "layer cache"),
    ("pipeline.run.layer_store", "load_layer", "layer cache"),
    ("pipeline.run.finetune_store", "save", "fine-tuning cache"),
    ("pipeline.run.finetune_store", "load", "fine-tuning cache"),
    ("flows.pretrain", "load_data", "data loading"),
    ("pipeline.app.preflight", "check_run", "preflight (data loading and checks)"),
    ("pipeline.tracking.store", "wait_for_store", "MLflow database creation"),
    ("flows.pretrain", "publish_results", "Prefect"),
    ("flows.pretrain", "publish_run_link", "Prefect"),
    ("prefect.server.api.server.SubprocessASGIServer", "start", SERVER),
    ("flows.server_guard", "wait_for_temporary_server", SERVER),  # started on a thread by flows.startup
)


class PartTimers:
    """Exclusive wall time per part: time inside a wrapped call, minus time in wrapped calls nested in it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.by_function: dict[tuple[str, str], float] = defaultdict(float)  # (part, function) -> seconds
        self._stack: list[float] = []  # per open call: seconds spent in calls nested in it
        self.background: dict[str, float] = defaultdict(float)  # part -> seconds on other threads (inclusive)
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, part: str) -> None:
        real = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(real, staticmethod | classmethod) or not callable(real):
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():  # off the critical path: shown apart
                start = time.perf_counter()
                try:
                    return real(*args, **kwargs)
                finally:
                    self.background[part] += time.perf_counter() - start
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                own = elapsed - self._stack.pop()
                self.seconds[part] += own
                self.by_function[(part, name)] += own
                if self._stack:
                    self._stack[-1] += elapsed

        self._undo.append((owner, name, real))
        setattr(owner, name, timed)

    def call(self, part: str, function: Callable[[], Any]) -> Any:
        """Run ``function()`` timed as ``part`` (on the main thread, outside any wrapped call)."""
        start = time.perf_counter()
        try:
            return function()
        finally:
            self.seconds[part] += time.perf_counter() - start

    def wrap_results(self, owner: Any, name: str, method: str, part: str) -> None:
        """Time ``method`` of every object ``owner.name(...)`` returns."""
        factory = getattr(owner, name)

        def made(*args: Any, **kwargs: Any) -> Any:
            obj = factory(*args, **kwargs)
            self.wrap(obj, method, part)
            return obj

        self._undo.append((owner, name, factory))
        setattr(owner, name, made)

    def install(self, timed: tuple[tuple[str, str, str], ...]) -> list[str]:
        """Wrap every (module or class, attribute, part); returns the ones not found (code moved)."""
        missing = []
        for where, name, part in timed:
            owner = _resolve(where)
            if owner is None:
                missing.append(f"{where}.{name}")
                continue
            names = [name] if name != "*" else [n for n, v in vars(owner).items() if not n.startswith("__")
                                                 and callable(v) and getattr(v, "__module__", None) in
                                                 (owner.__name__, getattr(owner, "__module__", None))]
            for n in names:
                if n not in vars(owner):
                    missing.append(f"{where}.{n}")
                    continue
                self.wrap(owner, n, part)
        return missing

    def uninstall(self) -> None:
        for owner, name, real in reversed(self._undo):
            setattr(owner, name, real)
        self._undo.clear()


def _resolve(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    try:
        return importlib.import_module(path)
    except ImportError:
        pass
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _batches(n: int, batch_size: int, gen: torch.Generator):  # noqa: ANN202 - index batches
    order = torch.randperm(n, generator=gen)
    return (order[i : i + batch_size] for i in range(0, n, batch_size))


def plain_training(config: PipelineConfig) -> tuple[float, float]:
    """(seconds to load the data and pretrain every layer, seconds to fine-tune) with bare PyTorch loops."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = load_data(config.data, config.seed)
    inputs = torch.from_numpy(data.scaled().train)
    models = []
    for settings in config.resolved_layers():
        model = SparseAutoencoder(sae_config(settings, inputs.shape[1]))
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        model.train()
        for _ in range(settings.epochs):
            for idx in _batches(inputs.shape[0], settings.batch_size, gen):
                opt.zero_grad(set_to_none=True)
                model.objective(inputs[idx]).total.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            inputs = model.encode(inputs)
        models.append(model)
    layers_s, start = time.perf_counter() - start, time.perf_counter()
    if data.y_train is not None and config.finetune.epochs > 0:
        encoder = StackedEncoder.from_autoencoders(data.scaling, models)
        classes, y = np.unique(data.y_train, return_inverse=True)
        X, y = torch.from_numpy(np.asarray(data.X_train, np.float32)), torch.from_numpy(y)
        clf = StackClassifier(encoder, encoder.d_out, len(classes))
        decay = config.layer_settings(len(config.layers) - 1).weight_decay
        with torch.no_grad():
            codes = encoder(X)
        fit_softmax(clf.head, codes, y, weight_decay=decay, max_iter=400)
        opt = torch.optim.Adam(clf.parameters(), lr=config.finetune.lr)
        weights = [p for name, p in clf.named_parameters() if name.endswith("weight")]
        for _ in range(config.finetune.epochs):
            for idx in _batches(X.shape[0], config.finetune.batch_size, gen):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(clf(X[idx]), y[idx]) + 0.5 * decay * sum(w.pow(2).sum() for w in weights)
                loss.backward()
                opt.step()
    return layers_s, time.perf_counter() - start


def real_size(overrides: list[str]) -> None:
    """The 784-200-200 flow on mnist-5k with default epochs, its wall time split by part."""
    if not MNIST.exists():
        print(f"\nreal-size case skipped: {MNIST} is absent (it holds 5,000 MNIST digits; see its README)")
        return
    with tempfile.TemporaryDirectory(prefix="sae-pipeline-bench-real-") as tmp:
        _prefect_env(tmp)
        config = load_default_config("digits", [
            f"cache_dir={tmp}/cache", f"tracking_uri=sqlite:///{tmp}/mlflow.db", "name=mnist-5k",
            f"data.source={MNIST}", "data.features=images", "data.labels=labels",
            "layers.0.hidden=200", "layers.1.hidden=200", *overrides])
        from flows import pretrain_flow  # imported here: after PREFECT_HOME is set
        from flows.startup import flow_session

        timers = PartTimers()
        missing = timers.install(TIMED)
        for where, name, method, part in TIMED_RESULTS:
            owner = _resolve(where)
            if owner is None or not hasattr(owner, name):
                missing.append(f"{where}.{name}")
            else:
                timers.wrap_results(owner, name, method, part)
        load = os.getloadavg()
        start, cpu = time.perf_counter(), time.process_time()
        try:
            # As `sae-pipeline run` does (flows.startup.flow_session): the preflight reads the data, an MLflow
            # store is built on a thread while the temporary Prefect server starts, then the flow uses both.
            # Prefect imports its server's code (~1.5-3 s here) only to start the temporary server: that import
            # belongs to the server start, so it is timed as part of it (it would otherwise read as glue).
            timers.call(SERVER, lambda: importlib.import_module("prefect.server.api.server"))
            with flow_session(config):
                result = pretrain_flow(config)
        finally:
            timers.uninstall()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    parts = dict(timers.seconds)
    parts["Prefect and glue (the rest)"] = wall - sum(parts.values())
    server = parts.get(SERVER, 0.0)
    base = wall - server
    outside = base - sum(parts.get(p, 0.0) for p in TRAINING_PARTS)
    print(f"\nreal-size case: {MNIST.name}, {result.data.X_train.shape[0]} train / {result.data.X_val.shape[0]} val / "
          f"{result.data.X_test.shape[0]} test rows, layers 784-{'-'.join(str(s.hidden) for s in config.resolved_layers())}, "
          f"{config.defaults.epochs} epochs a layer (ran {[len(layer.history) for layer in result.layers]}), "
          f"fine-tuning {config.finetune.epochs} epochs; load average {load[0]:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} CPUs")
    if missing:
        print(f"(not timed, not found in this code: {', '.join(missing)})")
    print("| part | wall s | share of wall without the server start |")
    print("|---|---|---|")
    for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
        share = "" if part == SERVER else f"{seconds / base:.1%}"
        print(f"| {part} | {seconds:.1f} | {share} |")
    print(f"| **wall** | {wall:.1f} (CPU {cpu:.1f}) | |")
    top = sorted(((seconds, part, name) for (part, name), seconds in timers.by_function.items()
                  if part not in TRAINING_PARTS and seconds >= 0.05), reverse=True)
    if top:
        print("\nlargest functions outside training: " + "; ".join(f"{part}: {name} {seconds:.1f} s"
                                                               for seconds, part, name in top[:16]))
    timers.background = {part: seconds for part, seconds in timers.background.items() if seconds >= 0.05}
    if timers.background:
        print("\non a background thread, overlapping the above (not in the wall split): " + "; ".join(
            f"{part} {seconds:.1f} s" for part, seconds in sorted(timers.background.items(), key=lambda kv: -kv[1])))
    verdict = "PASS" if outside <= OUTSIDE_TRAINING_TARGET * base else "FAIL"
    print(f"\neverything but layer training and fine-tuning epochs: {outside:.1f} s = {outside / base:.1%} of "
          f"{base:.1f} s (wall without the server start); target <= {OUTSIDE_TRAINING_TARGET:.0%}: {verdict}")
    print(f"probes: {result.probes}; fine-tuned accuracy "
          f"{result.finetuned.test_accuracy_after if result.finetuned else float('nan'):.4f}")


def _prefect_env(tmp: str) -> None:
    # Prefect reads its settings when first imported: a private home and a temporary server, as `make run`.
    os.environ.update(PREFECT_HOME=f"{tmp}/prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", DO_NOT_TRACK="1",
                      MLFLOW_ENABLE_TELEMETRY="false")
    os.environ.pop("PREFECT_API_URL", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the digits config, e.g. --set defaults.epochs=5")
    parser.add_argument("--only", choices=["digits", "real"], help="run one case (default: both)")
    args = parser.parse_args(argv)
    if args.only == "real":
        real_size(args.overrides)
        return 0
    digits_case(args.overrides)
    if args.only is None:  # its own process: Prefect's settings and temporary server belong to the first case
        sets = [arg for value in args.overrides for arg in ("--set", value)]
        return subprocess.run([sys.executable, __file__, "--only", "real", *sets], check=False).returncode
    return 0


def digits_case(overrides: list[str]) -> None:
    """The digits config: plain loops, the flow on an empty cache, the flow again on a full one."""
    with tempfile.TemporaryDirectory(prefix="sae-pipeline-bench-") as tmp:
        _prefect_env(tmp)
        config = load_default_config("digits", [f"cache_dir={tmp}/cache", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
                                                *overrides])
        plain_training(config.model_copy(update={"layers": config.layers[:1]}))  # warm-up: imports, first calls
        cpu = time.process_time()
        plain_layers, plain_finetune = plain_training(config)
        plain, plain_cpu = plain_layers + plain_finetune, time.process_time() - cpu
        from flows import pretrain_flow  # imported here: after PREFECT_HOME is set

        runs = []
        for _ in range(2):  # empty cache, then every layer and the fine-tuning cached
            start, cpu = time.perf_counter(), time.process_time()
            result = pretrain_flow(config)
            runs.append((result, time.perf_counter() - start, time.process_time() - cpu))
    (first, first_s, first_cpu), (cached, cached_s, cached_cpu) = runs
    start = time.perf_counter()
    probe_accuracies(first.data, first.layers, seed=config.seed)
    probes_s = time.perf_counter() - start
    assert not any(layer.reused for layer in first.layers) and all(layer.reused for layer in cached.layers)
    assert cached.finetuned is None or cached.finetuned.reused
    budget = PLAIN_FACTOR * plain + FIXED_SECONDS
    print(f"\ndigits config: layers {[s.hidden for s in config.resolved_layers()]}, {config.defaults.epochs} epochs, "
          f"batch {config.defaults.batch_size}, fine-tuning {config.finetune.epochs} epochs; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| run | wall s | CPU s (this process) | layers s | fine-tuning s | everything else s | vs target (wall) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| plain PyTorch loops | {plain:.1f} | {plain_cpu:.1f} | {plain_layers:.1f} | {plain_finetune:.1f} | 0 | |")
    for name, result, seconds, cpu_s, verdict in (
        ("flow, empty cache", first, first_s, first_cpu, f"{first_s / plain:.2f}x plain; budget {PLAIN_FACTOR}x + "
         f"{FIXED_SECONDS:.0f}s = {budget:.1f}s: {'PASS' if first_s <= budget else 'FAIL'}"),
        ("flow, layers and fine-tuning cached", cached, cached_s, cached_cpu,
         f"{cached_s / first_s:.0%} of the first run; "
         f"target < {CACHED_FRACTION:.0%}: {'PASS' if cached_s < CACHED_FRACTION * first_s else 'FAIL'}"),
    ):
        layers = sum(layer.seconds for layer in result.layers)
        finetune = result.finetuned.seconds if result.finetuned is not None else 0.0
        print(f"| {name} | {seconds:.1f} | {cpu_s:.1f} | {layers:.1f} | {finetune:.1f} | "
              f"{seconds - layers - finetune:.1f} | {verdict} |")
    print(f"\nCPU-time ratios (less sensitive to other load on a shared machine): flow {first_cpu / plain_cpu:.2f}x "
          f"plain; cached re-run {cached_cpu / first_cpu:.0%} of the first run.")
    print(f"\n'everything else' includes the linear probes of the evaluate step ({probes_s:.1f}s when timed alone), MLflow "
          "logging and registration, and in the first run the temporary Prefect server and MLflow database set-up.")


if __name__ == "__main__":
    sys.exit(main())
