"""Fine-tuning: a softmax layer on frozen codes first, then the whole stack end to end."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from sae.batches import ShuffledBatches, row_chunks
from sae.classifier import ClassifierModule, StackClassifier, fit_softmax
from sae.stack import StackedEncoder
from sae.train import SizedLoader, quiet_trainer


@dataclass
class FinetuneResult:
    """The fine-tuned encoder (a copy: the pretrained one is kept) and accuracies before and after."""

    encoder: StackedEncoder
    head: torch.nn.Linear
    classes: np.ndarray
    accuracy_before: float  # softmax trained on frozen pretrained codes
    accuracy_after: float  # after end-to-end fine-tuning
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def _fit(module: ClassifierModule, batches: ShuffledBatches, epochs: int, logger: Any) -> None:
    trainer = quiet_trainer(epochs, n_batches=len(batches), logger=logger, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=SizedLoader(batches))


def accuracy(model: StackClassifier, X: np.ndarray, y: np.ndarray, chunk_rows: int = 8192) -> float:
    """Fraction of rows whose argmax logit equals the label index."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start, chunk in row_chunks(X, chunk_rows):
            correct += int((model(torch.from_numpy(chunk)).argmax(1).numpy() == y[start : start + chunk_rows]).sum())
    return correct / X.shape[0]


def finetune_stack(
    encoder: StackedEncoder,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    epochs: int,
    softmax_iterations: int = 400,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    logger: Any = None,
) -> FinetuneResult:
    """Train a softmax head on the frozen stack, then everything end to end; raw features in, labels out."""
    start = time.perf_counter()
    classes, y_idx = np.unique(y_train, return_inverse=True)
    lookup = {c: i for i, c in enumerate(classes.tolist())}
    y_test_idx = np.array([lookup.get(c, -1) for c in y_test.tolist()])
    pl.seed_everything(seed, workers=True, verbose=False)
    model = StackClassifier(copy.deepcopy(encoder).train(), encoder.d_out, len(classes))
    X = np.ascontiguousarray(X_train, dtype=np.float32)
    batches = ShuffledBatches(X, batch_size, seed=seed, labels=y_idx)
    # Like the classic exercise: the softmax first converges on frozen codes (convex, full-batch L-BFGS).
    codes = torch.from_numpy(encoder.transform(X))
    fit_softmax(model.head, codes, torch.from_numpy(y_idx), weight_decay=weight_decay, max_iter=softmax_iterations)
    before = accuracy(model, X_test, y_test_idx)
    model.train()  # accuracy() left it in eval mode
    end_to_end = ClassifierModule(model, lr=lr, weight_decay=weight_decay)
    _fit(end_to_end, batches, epochs, logger)
    after = accuracy(model, X_test, y_test_idx)
    model.encoder.eval()
    return FinetuneResult(
        model.encoder, model.head, classes, before, after, end_to_end.history, time.perf_counter() - start
    )
