"""How good are the features? Runs the shipped configs and prints test accuracies next to the raw-pixel probe.

Bars: on nudged-digits (80/20 split, seed 0, as scikit-learn's RBM example) a probe on the stack's top codes
must beat 0.94 (RBM features there: 0.94; raw pixels: 0.78). On patches the first layer's filters are saved
to docs/patches-filters.png: they should look like localized oriented edges.

    .venv/bin/python benchmarks/quality.py [--only nudged-digits] [--set layers.1.noise=0.3 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.config import PipelineConfig, default_config_path
from pipeline.greedy import pretrain_stack
from pipeline.tracking.plots import filter_grid

ROOT = Path(__file__).resolve().parents[1]
NUDGED_BAR = 0.94


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "nudged-digits", "patches"], action="append")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    for name in args.only or ["digits", "nudged-digits", "patches"]:
        config = PipelineConfig.from_yaml(default_config_path(name), args.overrides)
        start = time.perf_counter()
        result = pretrain_stack(config)
        seconds = time.perf_counter() - start
        print(f"\n== {name} ({seconds:.0f} s, {result.data.X_train.shape[0]} train / {result.data.X_test.shape[0]} test)")
        print(result.table())
        if name == "nudged-digits":
            top = result.probes[f"layer_{len(result.layers)}"]
            verdict = "PASS" if top > NUDGED_BAR else "FAIL"
            print(f"top-layer probe {top:.4f} vs bar {NUDGED_BAR} (raw pixels {result.probes['raw']:.4f}): {verdict}")
        if name == "patches":
            out = filter_grid(result.layers[0].model.encoder.weight.detach().numpy(), ROOT / "docs" / "patches-filters.png")
            print(f"first-layer filters: {out}")


if __name__ == "__main__":
    main()
