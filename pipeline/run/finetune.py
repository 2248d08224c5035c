"""Fine-tuning: a softmax layer on frozen codes first, then the whole stack end to end.

What chooses follows ``pipeline.evaluation.choosing``. With few labels (fewer than
``finetune.validate_from_per_class`` a class and unlabeled rows to learn from), method ``semi`` trains on every
labeled row, validation rows included, starts from a softmax whose L2 strength k-fold cross-validation chose,
and keeps its last step: nothing is chosen on a validation split. With enough labels, validation chooses: each
run keeps its best epoch (or its start, when no epoch beats the softmax on frozen codes), and method ``semi``
also runs supervised fine-tuning and keeps whichever validates better (ties: supervised). With every training
row labeled there is nothing for the unlabeled terms to learn from, and fine-tuning is supervised. The test
split is only measured, before and after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from pipeline.data.labels import class_indices, indices_of
from pipeline.data.loading import Splits
from pipeline.evaluation.choosing import ChoosingRows, rows_for_choosing
from pipeline.run.device import Device
from sae.stack import StackedEncoder

if TYPE_CHECKING:
    from pipeline.config import FinetuneConfig
    from pipeline.data.loading import LoadedData
    from pipeline.run.end_to_end import Candidate, Method

EncoderKind = Literal["pretrained", "finetuned"]


@dataclass
class FinetuneResult:
    """The kept encoder and softmax (copies: the pretrained stack is untouched) and accuracies before/after.

    Validation accuracies are nan when validation chose nothing (few labels: see the module docstring).
    """

    encoder: StackedEncoder  # the kept run's encoder, or a copy of the pretrained one when no epoch won
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
    method: Method = "supervised"  # the kept run's
    validated: bool = True  # whether validation chose (else: few labels, the last step kept)
    candidates: dict[str, float] = field(default_factory=dict)  # validation accuracy of each run that competed
    n_labeled: int = 0  # labeled rows it learned from
    n_unlabeled: int = 0  # unlabeled rows the semi-supervised terms also drew from
    logged_history: list[dict[str, float]] = field(default_factory=list)  # the epochs the logger got (the last run)
    reused: bool = False  # loaded from the fine-tuning cache (pipeline.run.finetune_store) rather than trained

    @property
    def kept(self) -> str:
        """What was kept, in a few words: ``semi: last step``, ``supervised: epoch 7``, ``semi: start``."""
        if not self.validated:
            return f"{self.method}: last step"
        return f"{self.method}: " + ("start" if self.best_epoch is None else f"epoch {self.best_epoch + 1}")


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
    instead of encoding every split again. ``trainer_options`` are the run's Lightning settings: fine-tuning
    uses their accelerator and precision on one device. ``logger`` gets the epochs of the last run (semi when
    two compete).
    """
    # Here, not above: Lightning (end_to_end) loads only when fine-tuning runs, not for runs that train nothing.
    from pipeline.run.end_to_end import accuracy

    start = time.perf_counter()
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    device = Device.of(dict(trainer_options or {}))
    rows = rows_for_choosing(data.X_train, data.y_train, data.X_val, data.y_val, settings.validate_from_per_class)
    if codes is None:  # called on its own: encode the splits once here
        codes = Splits(*(encoder.transform(np.asarray(x, np.float32)) for x in (data.X_train, data.X_val, data.X_test)))
    top = rows_for_choosing(codes.train, data.y_train, codes.val, data.y_val, settings.validate_from_per_class)
    classes, y = class_indices(rows.y)
    y_val = None if rows.y_val is None else indices_of(classes, rows.y_val)
    y_test = indices_of(classes, data.y_test)
    methods = fine_tunings(settings.method, validated=rows.validated, n_unlabeled=rows.n_unlabeled)
    runs = [_run(method, encoder, rows, top, classes, y, y_val, codes.test, y_test, settings, seed=seed, device=device,
                 logger=logger if method == methods[-1] else None) for method in methods]
    kept = pick(runs)
    test_after = (accuracy(kept.model, data.X_test, y_test) if kept.best_epoch is not None or not rows.validated
                  else kept.test_before)
    model = kept.model.cpu()
    return FinetuneResult(
        encoder=model.encoder.eval(), head=model.head, classes=classes, val_accuracy_before=kept.val_before,
        val_accuracy_after=kept.val_after, test_accuracy_before=kept.test_before, test_accuracy_after=test_after,
        best_epoch=kept.best_epoch, history=kept.history, seconds=time.perf_counter() - start,
        device=device.torch.type, method=kept.method, validated=rows.validated,
        candidates={r.method: r.val_after for r in runs} if rows.validated else {},
        n_labeled=len(rows.y), n_unlabeled=rows.n_unlabeled, logged_history=runs[-1].history,
    )


def fine_tunings(method: Method, *, validated: bool, n_unlabeled: int) -> list[Method]:
    """The runs that compete, supervised first: ``method`` supervised alone; semi alone with few labels; with
    enough labels semi beside supervised, and supervised alone when no training row is unlabeled (the unlabeled
    terms then have nothing to learn from: on digits, 144 validation rows picked semi over supervised by one row
    and it scored one test image less)."""
    if method == "supervised" or n_unlabeled == 0:
        return ["supervised"]
    return ["supervised", "semi"] if validated else ["semi"]


def pick(runs: list[Candidate]) -> Candidate:
    """The run fine-tuning keeps: the highest validation accuracy (the first run, supervised, on a tie); a run
    without validation is the only one."""
    if len(runs) == 1:
        return runs[0]
    assert all(r.val_after == r.val_after for r in runs), "several runs compete only on validation"
    return max(runs, key=lambda r: r.val_after)  # max keeps the first of equals


def _run(method: Method, encoder: StackedEncoder, rows: ChoosingRows, top: ChoosingRows, classes: np.ndarray,
         y: np.ndarray, y_val: np.ndarray | None, test_codes: np.ndarray, y_test: np.ndarray,
         settings: FinetuneConfig, *, seed: int, device: Device, logger: Any) -> Candidate:
    """One end-to-end run from its softmax on frozen codes (L2: the supervised setting, or chosen by k-fold CV
    over the labeled rows for semi), scored before and after."""
    from pipeline.run.end_to_end import Candidate, accuracy, start_model, train, vat_radius

    codes = np.asarray(top.train[top.labeled], np.float32)
    weight_decay = settings.weight_decay
    if method == "semi":  # scikit-learn's objective: mean cross-entropy + ||W||^2 / (2 C n)
        from pipeline.evaluation.cross_validation import fit_probe_cv  # scikit-learn folds: semi only

        c = fit_probe_cv(codes, y, standardise=False, seed=seed, device=device.torch).c
        weight_decay = 1.0 / (c * len(y))
    model = start_model(encoder, codes, y, len(classes), weight_decay=weight_decay,
                        iterations=settings.softmax_iterations, seed=seed, device=device)
    val_before = float("nan") if top.val is None else accuracy(model.head, np.asarray(top.val, np.float32), y_val)
    test_before = accuracy(model.head, np.asarray(test_codes, np.float32), y_test)
    radius = 0.0
    if method == "semi" and settings.semi.vat > 0:
        with torch.no_grad():
            scaled = encoder.scaler(torch.from_numpy(np.ascontiguousarray(rows.train, np.float32))).numpy()
        radius = vat_radius(scaled, settings.semi.vat_eps, device=device.torch)
    validation = None if rows.val is None else (np.asarray(rows.val, np.float32), y_val)
    module = train(model, method, np.asarray(rows.train[rows.labeled], np.float32), y,
                   np.asarray(rows.train, np.float32), validation, settings, start_accuracy=val_before,
                   radius=radius, seed=seed, device=device, logger=logger)
    val_after = max(module.best_accuracy, val_before) if validation is not None else float("nan")
    return Candidate(method, model, val_before, val_after, test_before, module.best_epoch,
                     module.keep, module.history, weight_decay)


def choose_encoder(policy: str, finetuned: FinetuneResult | None) -> tuple[EncoderKind, str]:
    """(which encoder takes the alias, why) under ``register.encoder``; looks at validation accuracy only, and
    with few labels (no validation) registers the fine-tuned one by rule."""
    if finetuned is None:
        return "pretrained", "no fine-tuning ran (no labels, or finetune.epochs is 0)"
    before, after = finetuned.val_accuracy_before, finetuned.val_accuracy_after
    numbers = f"validation accuracy: fine-tuned {after:.4f}, pretrained with a softmax on frozen codes {before:.4f}"
    if not finetuned.validated:
        numbers = (f"{finetuned.n_labeled} labeled rows and {finetuned.n_unlabeled} unlabeled: too few labels for "
                   f"validation to choose; {finetuned.kept} kept")
    match policy:
        case "pretrained" | "finetuned":
            return policy, f"register.encoder={policy} ({numbers})"  # type: ignore[return-value]
        case "best":
            if not finetuned.validated:
                return "finetuned", f"register.encoder=best: fine-tuned by rule ({numbers})"
            if finetuned.best_epoch is not None and after > before:
                return "finetuned", f"register.encoder=best: fine-tuned wins ({numbers}; {finetuned.kept})"
            return "pretrained", f"register.encoder=best: no fine-tuning epoch beat the start ({numbers})"
        case _:
            raise ValueError(f"register.encoder={policy!r}: choose pretrained, finetuned or best")
