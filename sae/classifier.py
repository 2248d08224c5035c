"""A softmax layer on top of a stacked encoder, and the LightningModule that fine-tunes it."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class StackClassifier(nn.Module):
    """encoder (batch, d_in) -> codes (batch, d_out) -> head -> logits (batch, n_classes)."""

    def __init__(self, encoder: nn.Module, d_out: int, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(d_out, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class ClassifierModule(pl.LightningModule):
    """Fine-tunes a StackClassifier end to end: cross-entropy + weight_decay/2 * sum of squared weights."""

    def __init__(self, model: StackClassifier, *, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.history: list[dict[str, float]] = []
        self._weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        self._sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    def on_train_epoch_start(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        with torch.no_grad():
            b = float(y.shape[0])
            self._sums += torch.stack([loss.double() * b, (logits.argmax(1) == y).sum().double(), loss.new_tensor(b).double()])
        return loss + 0.5 * self.weight_decay * sum(w.pow(2).sum() for w in self._weights)

    def on_train_epoch_end(self) -> None:
        loss, correct, n = self._sums.tolist()
        if n:
            metrics = {"loss": loss / n, "accuracy": correct / n}
            self.history.append({"epoch": float(self.current_epoch), **metrics})
            self.log_dict(metrics, on_epoch=True)


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
