"""A softmax layer on top of a stacked encoder, and the LightningModule that fine-tunes it."""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from sae.module import full_precision, log_epoch_metrics
from sae.semi import SemiTerms, consistency_loss, vat_loss

VAL_CHUNK = 8192  # rows per forward pass when measuring validation accuracy


class StackClassifier(nn.Module):
    """encoder (batch, d_in) -> codes (batch, d_out) -> head -> logits (batch, n_classes).

    The encoder is a ``StackedEncoder``, or any module without a ``scaler`` (its input is then the raw one).
    """

    def __init__(self, encoder: nn.Module, d_out: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(d_out, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_scaled(self.scaled(x))

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) raw features -> (batch, d_in) the inputs layer 1 sees (perturbations are added here)."""
        scaler = getattr(self.encoder, "scaler", None)
        return x if scaler is None else scaler(x)

    def classify_scaled(self, h: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) scaled inputs -> (batch, n_classes) logits."""
        encode = getattr(self.encoder, "encode_scaled", self.encoder)
        return self.head(encode(h))


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a StackClassifier end to end: cross-entropy + weight_decay/2 * sum of squared weights, plus
    with ``semi`` the unlabeled terms of ``sae.semi`` (consistency and VAT, ramped up over ``semi.steps``).

    Batches are (x, y) pairs, (x, y, x_unlabeled) triples with ``semi``, or lists of them (one optimizer step
    each, as layer training does). With ``keep="best"`` and ``validation`` each epoch reports
    ``val_accuracy``; ``best_state`` holds the starting weights until an epoch strictly beats
    ``start_accuracy`` (and every best so far), then that epoch's; ``best_epoch`` says which (None: the
    start). ``keep="last"`` keeps the last finite epoch's weights (for runs that choose nothing on validation).
    ``seed`` seeds the masks and directions of the unlabeled terms.
    """

    def __init__(
        self,
        model: StackClassifier,
        *,
        lr: float,
        weight_decay: float,
        validation: tuple[torch.Tensor, torch.Tensor] | None = None,
        start_accuracy: float = -math.inf,
        keep: Literal["best", "last"] = "best",
        semi: SemiTerms | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation = validation
        self.keep = keep
        self.semi = semi
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._steps = 0  # optimizer steps taken (the ramp's clock)
        self.history: list[dict[str, float]] = []
        self.best_accuracy = start_accuracy
        self.best_epoch: int | None = None
        self.best_state = self._snapshot()
        self._weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        self._sums: torch.Tensor | None = None  # loss * n, correct, each unlabeled term * n; on the model's device
        self._n = 0  # rows seen this epoch (on the host: no per-step copy to the device)
        self.automatic_optimization = False  # several optimizer steps per Lightning batch

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def on_train_start(self) -> None:
        # As in SAEModule: full precision steps the torch optimizer directly; mixed precision keeps the wrapper.
        self._opt = self.optimizers(use_pl_optimizer=not full_precision(self.trainer))
        self._gen = torch.Generator(device=self.device).manual_seed(self.seed)

    def on_train_epoch_start(self) -> None:
        self._sums, self._n = None, 0

    def training_step(self, batch: tuple[torch.Tensor, ...] | list, batch_idx: int) -> torch.Tensor:
        last = torch.zeros(())
        for step in batch if isinstance(batch, list) else [batch]:
            last = self._step(*step)
        return last

    def _step(self, x: torch.Tensor, y: torch.Tensor, x_unlabeled: torch.Tensor | None = None) -> torch.Tensor:
        self._opt.zero_grad()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        terms = self._unlabeled_terms(x_unlabeled)
        penalty = 0.5 * self.weight_decay * sum(w.pow(2).sum() for w in self._weights)
        self.manual_backward(loss + sum(terms) + penalty)
        self._opt.step()
        self._steps += 1
        with torch.no_grad():
            row = torch.stack([loss.detach().double() * y.shape[0], (logits.argmax(1) == y).sum().double(),
                               *(t.detach().double() * y.shape[0] for t in terms)])
            self._sums = row if self._sums is None else self._sums + row
            self._n += int(y.shape[0])
        return loss.detach()

    def _unlabeled_terms(self, x: torch.Tensor | None) -> list[torch.Tensor]:
        """[weighted consistency, weighted VAT] on the unlabeled batch ``x`` (batch, d_in); [] without one."""
        if x is None or self.semi is None:
            return []
        semi, weight, classify = self.semi, self.semi.weight(self._steps), self.model.classify_scaled
        h = self.model.scaled(x)
        with torch.no_grad():
            p = F.softmax(classify(h), dim=1)
        zero = h.new_zeros(())
        return [semi.consistency * weight * consistency_loss(classify, h, p, semi.mask, self._gen)
                if semi.consistency > 0 else zero,
                semi.vat * weight * vat_loss(classify, h, p, semi.radius, self._gen) if semi.vat > 0 else zero]

    def on_train_epoch_end(self) -> None:
        if self._sums is None or not self._n:
            return
        loss, correct, *terms = self._sums.tolist()
        metrics = {"loss": loss / self._n, "accuracy": correct / self._n}
        metrics |= {name: value / self._n for name, value in zip(("consistency", "vat"), terms, strict=False)}
        finite = math.isfinite(metrics["loss"])
        if not finite:
            self.trainer.should_stop = True  # diverged: the kept epoch (the best, the last finite, or the start)
        if self.keep == "last" and finite:
            self.best_epoch, self.best_state = int(self.current_epoch), self._snapshot()
        if self.validation is not None:
            metrics["val_accuracy"] = self.validation_accuracy()
            if self.keep == "best" and metrics["val_accuracy"] > self.best_accuracy:
                self.best_accuracy, self.best_epoch = metrics["val_accuracy"], int(self.current_epoch)
                self.best_state = self._snapshot()
        self.history.append({"epoch": float(self.current_epoch), **metrics})
        log_epoch_metrics(self, metrics)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @torch.no_grad()
    def validation_accuracy(self) -> float:
        """Accuracy on the validation pairs, in chunks, on the model's device."""
        assert self.validation is not None
        x, y = self.validation
        self.model.eval()
        correct = sum(int((self.model(x[i : i + VAL_CHUNK]).argmax(1) == y[i : i + VAL_CHUNK]).sum())
                      for i in range(0, x.shape[0], VAL_CHUNK))
        self.model.train()
        return correct / max(int(x.shape[0]), 1)


def fit_softmax(
    head: nn.Linear, codes: torch.Tensor, labels: torch.Tensor, *, weight_decay: float, max_iter: int = 400
) -> None:
    """Fit ``head`` on fixed codes (batch, d) by full-batch L-BFGS on cross-entropy + weight decay (convex)."""
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(codes), labels) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
