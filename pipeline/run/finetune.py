"""Fine-tuning: a softmax layer on frozen codes first, then the whole stack end to end, keeping the best epoch.

Validation chooses: the epoch kept is the one with the highest validation accuracy, and only when it strictly
beats the softmax on frozen codes it started from; otherwise the pretrained encoder and that softmax are kept.
The test split is only measured, before and after.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch

from pipeline.data.labels import class_indices, indices_of
from pipeline.data.loading import Splits
from sae.batches import ShuffledBatches, row_chunks
from sae.classifier import ClassifierModule, StackClassifier, fit_softmax
from sae.stack import StackedEncoder
from sae.train import STEPS_PER_LIGHTNING_BATCH, SizedLoader, quiet_trainer

if TYPE_CHECKING:
    from pipeline.config import FinetuneConfig
    from pipeline.data.loading import LoadedData

EncoderKind = Literal["pretrained", "finetuned"]


@dataclass
class FinetuneResult:
    """The kept encoder and softmax (copies: the pretrained stack is untouched) and accuracies before/after."""

    encoder: StackedEncoder  # the best epoch's encoder, or a copy of the pretrained one when no epoch won
    head: torch.nn.Linear
    classes: np.ndarray
    val_accuracy_before: float  # softmax on frozen pretrained codes
    val_accuracy_after: float  # the kept epoch (== before when best_epoch is None)
    test_accuracy_before: float
    test_accuracy_after: float
    best_epoch: int | None  # 0-based epoch kept; None: no epoch beat the frozen-codes softmax on validation
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"  # where the end-to-end epochs ran


def finetune_device(trainer_options: dict[str, Any]) -> torch.device:
    """The one device fine-tuning runs on: a GPU when the trainer's accelerator asks for one and there is one."""
    wants_gpu = str(trainer_options.get("accelerator", "cpu")) in ("gpu", "cuda", "auto")
    return torch.device("cuda") if wants_gpu and torch.cuda.is_available() else torch.device("cpu")


def accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray, chunk_rows: int = 8192) -> float:
    """Fraction of rows whose argmax logit equals the label index (computed on the model's device)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start, chunk in row_chunks(X, chunk_rows):
            predicted = model(torch.from_numpy(chunk).to(device)).argmax(1).cpu().numpy()
            correct += int((predicted == y[start : start + chunk_rows]).sum())
    model.train()
    return correct / max(X.shape[0], 1)


def finetune_stack(
    encoder: StackedEncoder,
    data: LoadedData,
    settings: FinetuneConfig,
    *,
    seed: int,
    trainer_options: dict[str, Any] | None = None,
    logger: Any = None,
    codes: Splits | None = None,
) -> FinetuneResult:
    """Softmax on the frozen stack, then everything end to end; raw features in, labels out.

    ``codes`` are the stack's top-layer codes of the data's splits when the layers already computed them
    (``LayerResult.codes``: exactly what ``encoder`` gives on them): the softmax is fitted and scored on them
    instead of encoding every split again.

    ``trainer_options`` are the run's Lightning settings: fine-tuning uses their accelerator and precision on
    one device (data-parallel strategies apply to layer training only).
    """
    start = time.perf_counter()
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    # Only labeled rows fit and choose: the unlabeled ones (label -1 or "") trained the layers, nothing else.
    train, val = data.labeled_rows("train"), data.labeled_rows("val")
    classes, y_idx = class_indices(np.asarray(data.y_train)[train])
    y_val, y_test = indices_of(classes, np.asarray(data.y_val)[val]), indices_of(classes, data.y_test)
    options = dict(trainer_options or {})
    device = finetune_device(options)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = StackClassifier(copy.deepcopy(encoder).train(), encoder.d_out, len(classes)).to(device)
    X = torch.from_numpy(np.ascontiguousarray(data.X_train[train], dtype=np.float32)).to(device)
    X_val = torch.from_numpy(np.ascontiguousarray(data.X_val[val], dtype=np.float32)).to(device)
    # Like the classic exercise: the softmax first converges on frozen codes (convex, full-batch L-BFGS).
    if codes is None:  # called on its own: encode the labeled rows once here
        codes = Splits(*(encoder.transform(np.asarray(x, np.float32)) for x in (X.cpu().numpy(), X_val.cpu().numpy(),
                                                                                 data.X_test)))
    else:
        codes = Splits(codes.train[train], codes.val[val], codes.test)
    labels = torch.from_numpy(y_idx).to(device)
    fit_softmax(model.head, torch.from_numpy(np.ascontiguousarray(codes.train, dtype=np.float32)).to(device), labels,
                weight_decay=settings.weight_decay, max_iter=settings.softmax_iterations)
    val_before, test_before = accuracy(model.head, codes.val, y_val), accuracy(model.head, codes.test, y_test)
    module = ClassifierModule(model, lr=settings.lr, weight_decay=settings.weight_decay,
                              validation=(X_val, torch.from_numpy(y_val).to(device)), start_accuracy=val_before)
    if settings.epochs > 0:
        # Slices of a shuffled index on the device, several optimizer steps per Lightning batch (as layers train).
        loader = SizedLoader(ShuffledBatches(X, settings.batch_size, seed=seed, labels=labels),
                             group=STEPS_PER_LIGHTNING_BATCH)
        trainer = quiet_trainer(
            settings.epochs, n_batches=len(loader), logger=logger, accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1, precision=options.get("precision", "32-true"),
        )
        trainer.fit(module, train_dataloaders=loader)
    model.load_state_dict(module.best_state)  # the best epoch by validation, or the start
    test_after = accuracy(model, data.X_test, y_test) if module.best_epoch is not None else test_before
    model = model.cpu()
    return FinetuneResult(
        encoder=model.encoder.eval(), head=model.head, classes=classes, val_accuracy_before=val_before,
        val_accuracy_after=max(module.best_accuracy, val_before), test_accuracy_before=test_before,
        test_accuracy_after=test_after, best_epoch=module.best_epoch, history=module.history,
        seconds=time.perf_counter() - start, device=device.type,
    )


def choose_encoder(policy: str, finetuned: FinetuneResult | None) -> tuple[EncoderKind, str]:
    """(which encoder takes the alias, why) under ``register.encoder``; looks at validation accuracy only."""
    if finetuned is None:
        return "pretrained", "no fine-tuning ran (no labels, or finetune.epochs is 0)"
    before, after = finetuned.val_accuracy_before, finetuned.val_accuracy_after
    numbers = f"validation accuracy: fine-tuned {after:.4f}, pretrained with a softmax on frozen codes {before:.4f}"
    match policy:
        case "pretrained" | "finetuned":
            return policy, f"register.encoder={policy} ({numbers})"  # type: ignore[return-value]
        case "best":
            if finetuned.best_epoch is not None and after > before:
                return "finetuned", f"register.encoder=best: fine-tuned wins ({numbers}; epoch {finetuned.best_epoch + 1})"
            return "pretrained", f"register.encoder=best: no fine-tuning epoch beat the start ({numbers})"
        case _:
            raise ValueError(f"register.encoder={policy!r}: choose pretrained, finetuned or best")
