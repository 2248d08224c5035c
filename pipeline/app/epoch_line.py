"""The Lightning callback behind the progress printer's epoch lines (imported only by a run that trains)."""

from __future__ import annotations

import time
from typing import IO

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class EpochLine(Callback):
    """One line per finished epoch. Lightning calls a callback's epoch-end hook before the module's, which is
    where the module records the epoch: so each epoch is printed once the next starts, the last at the end."""

    def __init__(self, label: str, epochs: int, stream: IO[str]) -> None:
        self.label, self.epochs, self.stream = label, epochs, stream
        self.started = time.perf_counter()
        self.printed = 0  # history rows printed so far

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_new(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_new(pl_module)

    def _print_new(self, pl_module: pl.LightningModule) -> None:
        history = getattr(pl_module, "history", [])
        for row in history[self.printed:]:
            self._print(row)
        self.printed = len(history)

    def _print(self, last: dict[str, float]) -> None:
        parts = [f"{self.label} epoch {int(last['epoch']) + 1}/{self.epochs}", f"loss {last['loss']:.4f}"]
        if "val_loss" in last:
            parts.append(f"val {last['val_loss']:.4f}")
        if "l0" in last:
            parts.append(f"L0 {last['l0']:.1f}")
        parts.append(f"{time.perf_counter() - self.started:.1f}s")
        print("  ".join(parts), file=self.stream, flush=True)
