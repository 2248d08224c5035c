"""What do the Prefect flow and its cache cost, and save, on the default run?

Measures, in this process and in this order: (1) the same layers and fine-tuning trained by plain PyTorch
loops (same data, epochs, batch size, optimizer, learning rates; no Lightning, no tracking); (2) the flow
end to end on an empty cache (temporary Prefect server, MLflow tracking and registration into a temporary
sqlite store); (3) the flow again on the same config, reusing every layer from the cache.
Targets: (2) <= 1.25 x (1) + 15 s of fixed start-up; (3) < 20% of (2).

    .venv/bin/python benchmarks/pipeline_overhead.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import PipelineConfig, load_default_config  # noqa: E402
from pipeline.data.loading import load_data  # noqa: E402
from pipeline.evaluate import probe_accuracies  # noqa: E402
from pipeline.greedy import sae_config  # noqa: E402
from sae import SparseAutoencoder  # noqa: E402
from sae.classifier import StackClassifier, fit_softmax  # noqa: E402
from sae.stack import StackedEncoder  # noqa: E402

PLAIN_FACTOR, FIXED_SECONDS, CACHED_FRACTION = 1.25, 15.0, 0.20


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the digits config, e.g. --set defaults.epochs=5")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sae-pipeline-bench-") as tmp:
        # Prefect reads its settings when first imported: a private home and a temporary server, as `make run`.
        os.environ.update(PREFECT_HOME=f"{tmp}/prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                          PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", DO_NOT_TRACK="1",
                          MLFLOW_ENABLE_TELEMETRY="false")
        os.environ.pop("PREFECT_API_URL", None)
        config = load_default_config("digits", [f"cache_dir={tmp}/cache", f"tracking_uri=sqlite:///{tmp}/mlflow.db",
                                                *args.overrides])
        plain_training(config.model_copy(update={"layers": config.layers[:1]}))  # warm-up: imports, first calls
        cpu = time.process_time()
        plain_layers, plain_finetune = plain_training(config)
        plain, plain_cpu = plain_layers + plain_finetune, time.process_time() - cpu
        from flows import pretrain_flow  # imported here: after PREFECT_HOME is set

        runs = []
        for _ in range(2):  # empty cache, then every layer cached
            start, cpu = time.perf_counter(), time.process_time()
            result = pretrain_flow(config)
            runs.append((result, time.perf_counter() - start, time.process_time() - cpu))
    (first, first_s, first_cpu), (cached, cached_s, cached_cpu) = runs
    start = time.perf_counter()
    probe_accuracies(first.data, first.layers, seed=config.seed)
    probes_s = time.perf_counter() - start
    assert not any(layer.reused for layer in first.layers) and all(layer.reused for layer in cached.layers)
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
        ("flow, every layer cached", cached, cached_s, cached_cpu, f"{cached_s / first_s:.0%} of the first run; "
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
