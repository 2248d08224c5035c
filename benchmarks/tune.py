"""Does tuning pay? Greedy per-layer search on nudged-digits vs the shipped config, with what pruning and the cache saved.

12 trials a layer over (hidden, target, beta, weight_decay) around the shipped values (trial 1 of each
layer is the shipped layer itself, recalled from the cache the shipped stack was trained into), probe
objective on the validation split, median pruning; the shipped config and the tuned one are then compared by the top-layer probe on the test split
(which the search never saw). A second, identical search follows: every trial is already in the study, so
it only loads the best layers (bar: < 10 % of the first search's wall time). Everything lives in a fresh
temporary directory (cache, optuna.db); no MLflow or Prefect (the search itself, not its tracking, is measured).

    .venv/bin/python benchmarks/tune.py [--trials 12] [--set defaults.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config import PipelineConfig, default_config_path
from pipeline.data.loading import LoadedData, load_data
from pipeline.evaluation.layer_probes import probe_accuracies
from pipeline.run import layer_store
from pipeline.run.greedy import layer_inputs, layer_seed, layer_trainer
from pipeline.run.results import LayerResult
from pipeline.tune.objective import probe_val_accuracy
from pipeline.tune.search import TuneHooks, tune_stack

SPACE = {  # around the shipped values (hidden 256, target 0.2, beta 3, weight decay 1e-4): the config is trial 1
    "hidden": [128, 256, 384],
    "target": {"low": 0.1, "high": 0.4, "log": True},
    "beta": {"low": 1.0, "high": 9.0, "log": True},
    "weight_decay": {"low": 3e-5, "high": 3e-4, "log": True},
}
LAYER_SPACE = {1: {"beta": {"low": 0.3, "high": 3.0, "log": True}}}  # the shipped layer 2 has beta 1


class Tally(TuneHooks):
    """Per trial: state, epochs trained, seconds, recalled."""

    def __init__(self) -> None:
        self.outcomes = []

    def on_trial_end(self, index, outcome) -> None:  # noqa: ANN001
        self.outcomes.append(outcome)


def stack_from_cache(config: PipelineConfig, data: LoadedData) -> list[LayerResult]:
    """The config's layers from the layer cache, training (into it) only those missing, as `run` does."""
    fingerprint, parent, layers = layer_store.input_fingerprint(data), None, []
    for settings in config.resolved_layers():
        inputs = layer_inputs(config, data, layers)  # the codes below after this layer's code_scaling
        seed = layer_seed(config, settings)
        key = layer_store.layer_cache_key(fingerprint, settings, seed, parent)
        directory = layer_store.layer_dir(config.cache_dir, key)
        reused = layer_store.is_complete(directory)
        if not reused:
            layer_store.train_into(directory, layer_trainer(settings, inputs, seed=seed), seed=seed, key=key, parent_key=parent)
        layers.append(layer_store.load_layer(directory, settings, reused=reused))
        parent = key
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sae-tune-bench-"))
    shipped = PipelineConfig.from_yaml(default_config_path("nudged-digits"),
                                       [f"cache_dir={tmp / 'cache'}", "finetune.epochs=0", *args.overrides])
    data = load_data(shipped.data, shipped.seed)
    search = {"trials": args.trials, "pruner": "median", "objective": "probe", "defaults": SPACE,
              "layers": LAYER_SPACE}
    config = PipelineConfig.model_validate(shipped.model_dump(mode="json") | {"search": search})
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    epochs = shipped.defaults.epochs

    started = time.perf_counter()
    base = stack_from_cache(shipped, data)
    shipped_seconds = time.perf_counter() - started
    tally = Tally()
    started = time.perf_counter()
    first = tune_stack(config, storage, hooks=[tally], data=data)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = Tally()
    tune_stack(config, storage, hooks=[again], data=data)
    second_seconds = time.perf_counter() - started

    started = time.perf_counter()
    tuned = stack_from_cache(first.best_config, data)
    assembled_seconds = time.perf_counter() - started
    assert all(layer.reused for layer in tuned), "the tuned stack should come from the cache"
    best_trained = sum(o.seconds for layer in first.layers for o in tally.outcomes
                       if o.key == layer.best_key and not o.recalled)
    top = f"layer_{len(base)}"
    shipped_probe = probe_accuracies(data, base, seed=shipped.seed)[top]
    tuned_probe = probe_accuracies(data, tuned, seed=shipped.seed)[top]
    shipped_val, tuned_val = (probe_val_accuracy(np.asarray(s[-1].codes.train), data.y_train, np.asarray(s[-1].codes.val),
                                                 data.y_val, seed=shipped.seed) for s in (base, tuned))

    print(f"nudged-digits: {data.X_train.shape[0]} train / {data.X_val.shape[0]} val / {data.X_test.shape[0]} test; "
          f"{args.trials} trials a layer, {epochs} epochs max; {tmp}")
    print(first.table())
    trained = [o for o in tally.outcomes if not o.recalled and o.state != "failed"]
    done = [o for o in trained if o.state == "complete"]
    per_epoch = sum(o.seconds for o in done) / max(sum(o.epochs for o in done), 1)
    pruned = [o for o in trained if o.state == "pruned"]
    epochs_saved = sum(epochs - o.epochs for o in pruned)
    recalled = [o for o in tally.outcomes if o.recalled]
    per_trial = sum(o.seconds for o in done) / max(len(done), 1)
    states = {s: sum(o.state == s for o in tally.outcomes) for s in ("complete", "pruned", "failed")}
    print(f"\nsearch wall time: {first_seconds:.1f} s ({len(tally.outcomes)} trials: {states}); "
          f"shipped stack trained in {shipped_seconds:.1f} s")
    print(f"pruning: {len(pruned)} trials stopped early, {epochs_saved} of {len(trained) * epochs} epochs not trained "
          f"(~{epochs_saved * per_epoch:.0f} s at {per_epoch:.2f} s/epoch of the completed trials)")
    print(f"cache: {len(recalled)} trials recalled instead of trained (~{len(recalled) * per_trial:.0f} s at "
          f"{per_trial:.1f} s per completed trial); the tuned stack assembled from the cache in "
          f"{assembled_seconds:.1f} s (its layers took {best_trained:.1f} s to train in their trials)")
    print(f"second identical search: {second_seconds:.1f} s = {second_seconds / first_seconds:.1%} of the first "
          f"({len(again.outcomes)} trials run; bar < 10%): {'PASS' if second_seconds < 0.1 * first_seconds else 'FAIL'}")
    print(f"top-layer probe, validation split (the search's objective): tuned {tuned_val:.4f} vs shipped "
          f"{shipped_val:.4f}")
    print(f"top-layer probe, test split: tuned {tuned_probe:.4f} vs shipped {shipped_probe:.4f} "
          f"({'tuned better' if tuned_probe > shipped_probe else 'shipped better or equal'})")
    for layer in first.best_config.layers:
        print(f"best layer: {layer.model_dump(exclude_none=True)}")


if __name__ == "__main__":
    main()
