"""What a trial scores: a probe's validation accuracy on the layer's codes, or its validation reconstruction.

The per-epoch value (for pruning) is measured while the layer trains; the final value on the stored codes.
Only the validation split is used: the test split is never seen while choosing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from pipeline.data.labels import labeled_mask
from pipeline.data.loading import Splits
from pipeline.evaluation.probes import PROBE_CS, PROBE_MAX_ITER, PROBE_MAX_TRAIN, fit_probe, probe_rows
from sae.batches import row_chunks

EPOCH_PROBE_C = 1.0  # the per-epoch probe fits one C; the final one picks the best of evaluate's PROBE_CS
EPOCH_PROBE_ROWS = 1_500  # rows the per-epoch probe fits on: a cheap pruning signal, not the final score
EPOCH_PROBE_ITER = 100
RECONSTRUCTION = "val_mse"  # reconstruction alone: val_loss includes the sparsity penalty, which beta scales


def direction(objective: str) -> str:
    """``maximize`` for probe accuracy, ``minimize`` for reconstruction error."""
    match objective:
        case "probe":
            return "maximize"
        case "reconstruction":
            return "minimize"
    raise ValueError(f"objective={objective!r}: use probe or reconstruction")


def probe_val_accuracy(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray, *,
                       seed: int = 0, max_rows: int = PROBE_MAX_TRAIN, max_iter: int = PROBE_MAX_ITER,
                       cs: tuple[float, ...] = PROBE_CS) -> float:
    """Validation accuracy of ``pipeline.evaluation.probes.fit_probe`` on codes fitted on ``train`` (at most ``max_rows``
    seeded rows): C chosen as ``pipeline.evaluation.layer_probes`` chooses it, so the objective ranks layers as the report does."""
    labeled, val_labeled = np.flatnonzero(labeled_mask(y_train)), labeled_mask(y_val)  # unlabeled rows: no class
    rows = labeled[probe_rows(labeled.size, seed, max_rows)]
    fit = fit_probe(np.asarray(train[rows], np.float32), np.asarray(y_train)[rows],
                    np.asarray(val, np.float32)[val_labeled], np.asarray(y_val)[val_labeled], cs=cs, max_iter=max_iter)
    return fit.val_accuracy


def final_value(objective: str, codes: Splits, history: list[dict[str, float]], labels: tuple[Any, Any] | None,
                seed: int) -> float:
    """The trial's score on the trained layer: probe accuracy on its codes, or its last epoch's val mse."""
    if objective == "probe":
        assert labels is not None, "the probe objective needs labels"
        return probe_val_accuracy(np.asarray(codes.train), labels[0], np.asarray(codes.val), labels[1], seed=seed)
    if not history or RECONSTRUCTION not in history[-1]:
        raise ValueError("no validation reconstruction recorded: the layer needs a validation split")
    return float(history[-1][RECONSTRUCTION])


def _encode(module: pl.LightningModule, x: np.ndarray) -> np.ndarray:
    model = module.model
    out = []
    with torch.no_grad():
        for _, chunk in row_chunks(x, 8192):
            out.append(model.encode(torch.from_numpy(chunk).to(module.device)).float().cpu().numpy())
    return np.concatenate(out)


class EpochReporter(Callback):
    """Scores the layer after each ``every``-th epoch and hands (epoch, value) to ``report`` (which may prune).

    Lightning calls callbacks' on_train_epoch_end before the module's, which is where the epoch's
    validation metrics are made; so epoch k is reported at the start of epoch k+1 (the last one is not:
    there is nothing left to prune).
    """

    def __init__(self, objective: str, inputs: Splits, labels: tuple[Any, Any] | None, report: Callable[[int, float], None],
                 *, every: int = 1, seed: int = 0) -> None:
        self.objective, self.labels, self.report, self.every, self.seed = objective, labels, report, every, seed
        if objective == "probe":
            assert labels is not None
            rows = np.flatnonzero(labeled_mask(labels[0]))
            if rows.size > EPOCH_PROBE_ROWS:
                rows = np.sort(rows[np.random.default_rng(seed).choice(rows.size, EPOCH_PROBE_ROWS, replace=False)])
            self.train, self.y_train = np.asarray(inputs.train[rows], np.float32), np.asarray(labels[0])[rows]
            self.val = np.asarray(inputs.val, np.float32)
        self.values: list[tuple[int, float]] = []
        self.history: list[dict[str, float]] = []  # the module's epochs so far (kept when a trial is pruned)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = pl_module.history
        self.history = list(history)
        if not history or (len(history)) % self.every:
            return
        epoch = len(history) - 1
        if self.values and self.values[-1][0] == epoch:
            return
        if self.objective == "probe":
            was_training = pl_module.training
            pl_module.eval()
            value = probe_val_accuracy(_encode(pl_module, self.train), self.y_train, _encode(pl_module, self.val),
                                       self.labels[1], seed=self.seed, max_iter=EPOCH_PROBE_ITER,
                                       cs=(EPOCH_PROBE_C,))
            pl_module.train(was_training)
        else:
            value = float(history[-1][RECONSTRUCTION])
        if not math.isfinite(value):
            raise FloatingPointError(f"objective became {value} after epoch {epoch}; lower lr or narrow the space")
        self.values.append((epoch, value))
        self.report(epoch, value)
