"""What does MLflow tracking cost a pipeline run?

Runs the shipped digits config with ``MlflowTracking`` (temporary sqlite store: params, per-epoch metrics,
dataset input, plots, weights, two pyfunc models, registration) and without hooks, alternating in this
process after one untimed warm-up of each, and prints the median wall times and the overhead.
Target: tracking adds at most 10% or 3 s, whichever is larger. OpenMP threads wait passively here (unless
OMP_WAIT_POLICY is set): spinning threads on a busy shared machine make timings swing 10x, both arms alike.

    .venv/bin/python benchmarks/tracking_overhead.py [--rounds 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP: before the imports below
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
from collections.abc import Callable
from typing import Any

from pipeline.config import PipelineConfig, load_default_config
from pipeline.run.greedy import pretrain_stack
from pipeline.run.hooks import PipelineHooks
from pipeline.tracking.runs import MlflowTracking

TARGET_FRACTION, TARGET_SECONDS = 0.10, 3.0


HOOKS = ("on_run_start", "layer_logger", "layer_callbacks", "on_layer_end", "finetune_logger", "on_finetune_end",
         "on_run_end", "on_register", "on_run_failed")


class TimedHooks(PipelineHooks):
    """Delegates every hook to ``inner`` and adds up the seconds spent inside them."""

    def __init__(self, inner: PipelineHooks) -> None:
        self.seconds = 0.0
        for name in HOOKS:
            setattr(self, name, self._timed(getattr(inner, name)))

    def _timed(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args)
            finally:
                self.seconds += time.perf_counter() - start

        return call


def timed(config: PipelineConfig, tracked: bool, uri: str) -> tuple[float, float]:
    """(wall seconds of one pretrain_stack call, seconds inside the tracking hooks)."""
    hooks = TimedHooks(MlflowTracking(uri) if tracked else PipelineHooks())
    start = time.perf_counter()
    pretrain_stack(config, hooks)
    return time.perf_counter() - start, hooks.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each kind (alternating)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the digits config, e.g. --set defaults.epochs=5")
    args = parser.parse_args(argv)
    config = load_default_config("digits", ["trainer.accelerator=cpu", *args.overrides])
    warmup = load_default_config("digits", ["trainer.accelerator=cpu", "defaults.epochs=1", "finetune.epochs=1",
                                            "name=warmup"])
    with tempfile.TemporaryDirectory(prefix="sae-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        timed(warmup, False, uri)
        timed(warmup, True, uri)  # also creates the database: a one-time cost, not per run
        times: dict[bool, list[float]] = {False: [], True: []}
        inside: list[float] = []
        for i in range(args.rounds):
            for tracked in (False, True) if i % 2 == 0 else (True, False):
                wall, hooks = timed(config, tracked, uri)
                times[tracked].append(wall)
                if tracked:
                    inside.append(hooks)
                print(f"round {i + 1}: {'tracked' if tracked else 'plain  '} {wall:6.2f} s", file=sys.stderr, flush=True)
    plain, tracked = statistics.median(times[False]), statistics.median(times[True])
    overhead = tracked - plain
    allowed = max(TARGET_FRACTION * plain, TARGET_SECONDS)
    print(f"digits config ({len(config.layers)} layers, {config.defaults.epochs} epochs, "
          f"fine-tune {config.finetune.epochs}), median of {args.rounds}:")
    print(f"  without tracking     {plain:7.2f} s")
    print(f"  with MLflow          {tracked:7.2f} s")
    print(f"  overhead             {overhead:+7.2f} s ({overhead / plain:+.1%}); allowed {allowed:.2f} s "
          f"-> {'OK' if overhead <= allowed else 'OVER TARGET'}")
    print(f"  inside the hooks     {statistics.median(inside):7.2f} s (the direct cost: MLflow calls, plots, models, registry)")
    return 0 if overhead <= allowed else 1


if __name__ == "__main__":
    sys.exit(main())
