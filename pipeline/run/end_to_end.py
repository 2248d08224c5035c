"""The end-to-end trainings fine-tuning chooses from, on one device: supervised epochs over the labeled rows, and
semi-supervised steps (labeled batches plus unlabeled ones from every training row).

Each starts from a copy of the pretrained encoder with a softmax fitted on its frozen codes, and returns the
kept weights with their validation and test accuracy before and after (the test split is only scored).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.run.device import Device
from sae.batches import DrawnBatches, ShuffledBatches, row_chunks
from sae.classifier import ClassifierModule, StackClassifier, fit_softmax
from sae.quiet import quiet_lightning
from sae.semi import SemiTerms
from sae.stack import StackedEncoder
from sae.train import STEPS_PER_LIGHTNING_BATCH, SizedLoader, quiet_trainer

if TYPE_CHECKING:
    from pipeline.config import FinetuneConfig

Method = Literal["supervised", "semi"]
RADIUS_QUERIES = 1000  # rows whose nearest-neighbour distance sets the VAT step (seeded sample)
RADIUS_POOL = 50_000  # neighbours are looked for among at most this many training rows (seeded sample)


@dataclass
class Candidate:
    """One end-to-end run: its kept weights, how it was kept, and its accuracies (nan: no validation split)."""

    method: Method
    model: StackClassifier
    val_before: float
    val_after: float
    test_before: float
    best_epoch: int | None  # the kept epoch (0-based; a semi epoch is eval_every steps); None: the start
    keep: Literal["best", "last"]
    history: list[dict[str, float]] = field(default_factory=list)
    head_weight_decay: float = 0.0


def accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, chunk_rows: int = 8192) -> float:
    """Fraction of rows whose argmax logit equals the label index (computed on the model's device); nan for
    no rows."""
    if X.shape[0] == 0:
        return float("nan")
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start, chunk in row_chunks(X, chunk_rows):
            predicted = model(torch.from_numpy(chunk).to(device)).argmax(1).cpu().numpy()
            correct += int((predicted == y[start : start + chunk_rows]).sum())
    model.train()
    return correct / X.shape[0]


def start_model(encoder: StackedEncoder, codes: np.ndarray, y: np.ndarray, n_classes: int, *, weight_decay: float,
                iterations: int, seed: int, device: Device) -> StackClassifier:
    """A copy of ``encoder`` under a softmax fitted on its frozen ``codes`` (m, d_out) of labeled rows ``y``."""
    pl.seed_everything(seed, workers=True, verbose=False)  # the softmax's starting point
    model = StackClassifier(copy.deepcopy(encoder).train(), encoder.d_out, n_classes).to(device.torch)
    fit_softmax(model.head, device.tensor(codes), torch.from_numpy(y).to(device.torch), weight_decay=weight_decay,
                max_iter=iterations)
    return model


def train(model: StackClassifier, method: Method, X: np.ndarray, y: np.ndarray, X_all: np.ndarray,
          validation: tuple[np.ndarray, np.ndarray] | None, settings: FinetuneConfig, *, start_accuracy: float,
          radius: float, seed: int, device: Device, logger: Any = None) -> ClassifierModule:
    """Train ``model`` in place by ``method`` on labeled rows ``X`` (m, d_in), ``y`` (m,) and every training row
    ``X_all`` (semi); with ``validation`` the best epoch (or the start) is kept, else the last one."""
    labels = torch.from_numpy(y).to(device.torch)
    val = None if validation is None else (device.tensor(validation[0]), torch.from_numpy(validation[1]).to(device.torch))
    keep: Literal["best", "last"] = "best" if val is not None else "last"
    if method == "supervised":
        batches: Any = ShuffledBatches(device.tensor(X), settings.batch_size, seed=seed, labels=labels)
        epochs, lr, semi = settings.epochs, settings.lr, None
    else:
        s = settings.semi
        batches = DrawnBatches(device.tensor(X), labels, device.tensor(X_all), batch_labeled=min(s.batch_labeled, len(y)),
                               batch_unlabeled=s.batch_unlabeled, steps=min(s.eval_every, s.steps), seed=seed)
        epochs, lr = math.ceil(s.steps / batches.steps), s.lr
        semi = SemiTerms(consistency=s.consistency, mask=s.consistency_noise, vat=s.vat, radius=radius, ramp=s.ramp,
                         steps=epochs * batches.steps)
    module = ClassifierModule(model, lr=lr, weight_decay=settings.weight_decay, validation=val,
                              start_accuracy=start_accuracy, keep=keep, semi=semi, seed=seed)
    if epochs > 0:
        pl.seed_everything(seed, workers=True, verbose=False)
        loader = SizedLoader(batches, group=STEPS_PER_LIGHTNING_BATCH)
        with quiet_lightning():
            trainer = quiet_trainer(epochs, n_batches=len(loader), logger=logger, devices=1,
                                    precision=device.precision, accelerator="gpu" if device.torch.type == "cuda" else "cpu")
            trainer.fit(module, train_dataloaders=loader)
    model.load_state_dict(module.best_state)
    return module


def vat_radius(scaled: np.ndarray, eps: float, *, seed: int = 0, device: torch.device | str = "cpu") -> float:
    """``eps`` times the median Euclidean distance from a training row to its nearest other training row, on
    scaled inputs ``scaled`` (n, d): RADIUS_QUERIES rows against at most RADIUS_POOL (seeded draws)."""
    rng = np.random.default_rng(seed)
    n = scaled.shape[0]
    pool = np.sort(rng.choice(n, RADIUS_POOL, replace=False)) if n > RADIUS_POOL else np.arange(n)
    queries = np.sort(rng.choice(pool, min(RADIUS_QUERIES, len(pool)), replace=False))
    with torch.no_grad():
        q = torch.as_tensor(np.asarray(scaled[queries], np.float32), device=device)
        nearest = torch.full((len(queries),), math.inf, device=device)
        for start in range(0, len(pool), 4096):
            rows = pool[start : start + 4096]
            d = torch.cdist(q, torch.as_tensor(np.asarray(scaled[rows], np.float32), device=device))
            d[torch.as_tensor(queries[:, None] == rows[None, :], device=device)] = math.inf  # not itself
            nearest = torch.minimum(nearest, d.min(1).values)
        finite = nearest[torch.isfinite(nearest)]
    return eps * float(finite.median()) if finite.numel() else eps
