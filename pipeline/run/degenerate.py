"""Results that must never take the registry's alias (``champion``) however their headline compares: a layer whose
loss diverged or is not finite (or whose weights exploded), a layer whose every unit is dead, labels of a single class (accuracy 1.0 then says
nothing), a headline that is not a number. The run still registers the version (as ``challenger``) and says why."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipeline.run.results import LayerResult, PretrainResult

DIVERGED_FACTOR = 10.0  # a final training loss this many times the first epoch's means training diverged
EXPLODED_FACTOR = 1000.0  # a weight-decay term this many times the reconstruction term (or 1) means the weights blew up


def degenerate(result: PretrainResult) -> str | None:
    """Why ``result`` is degenerate (one clause per problem, joined), or None when it is not."""
    reasons = [reason for layer in result.layers for reason in _layer_problems(layer)]
    y = result.data.y_train
    if y is not None and len(classes := np.unique(y)) < 2:
        reasons.append(f"the labels hold a single class ({classes[0] if len(classes) else 'none'}), so any "
                       "accuracy is meaningless")
    name, value, _ = result.headline()
    if not math.isfinite(value):
        reasons.append(f"the headline {name} is {value}")
    return "; ".join(reasons) or None


def _layer_problems(layer: LayerResult) -> list[str]:
    number = layer.index + 1
    losses = [float(epoch["loss"]) for epoch in layer.history if "loss" in epoch]
    test_loss = layer.test_metrics.get("loss")
    out = []
    if not all(math.isfinite(x) for x in [*losses, *([] if test_loss is None else [float(test_loss)])]):
        out.append(f"layer {number}'s loss is not finite (training diverged)")
    elif len(losses) > 1 and losses[-1] > DIVERGED_FACTOR * losses[0]:
        out.append(f"layer {number}'s training loss rose from {losses[0]:.3g} to {losses[-1]:.3g} (diverged)")
    decay, reconstruction = (float(layer.test_metrics.get(key, 0.0)) for key in ("weight_decay", "reconstruction"))
    if decay > EXPLODED_FACTOR * max(reconstruction, 1.0):
        out.append(f"layer {number}'s weights exploded (weight-decay term {decay:.3g} against a reconstruction term "
                   f"of {reconstruction:.3g}: training diverged)")
    dead = layer.test_metrics.get("dead_fraction")
    if dead is not None and float(dead) >= 1.0:
        out.append(f"every unit of layer {number} is dead on the test split")
    return out
