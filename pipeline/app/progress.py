"""Live progress on stderr: one line per layer epoch, one per finished layer."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from pipeline.run.hooks import PipelineHooks

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.greedy import LayerResult


class _EpochLine(Callback):
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


class ProgressPrinter(PipelineHooks):
    """Prints progress to ``stream`` (stderr by default, so ``--json`` output on stdout stays clean)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.n_layers = 0

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_run_start(self, config: PipelineConfig, data: LoadedData) -> None:
        self.n_layers = len(config.layers)
        self._say(
            f"{config.name}: {data.source} — {data.X_train.shape[0]} train / {data.X_val.shape[0]} validation / {data.X_test.shape[0]} test samples, "
            f"{data.n_features} features, {self.n_layers} layers; {data.counts_line()}"
        )

    def layer_callbacks(self, index: int, settings: Any) -> list[Callback]:
        return [_EpochLine(f"layer {index + 1}/{self.n_layers or '?'}", settings.epochs, self.stream)]

    def on_layer_end(self, result: LayerResult) -> None:
        how = "reused from cache" if result.reused else f"trained in {result.seconds:.1f}s"
        loss = result.test_metrics.get("loss", float("nan"))
        self._say(f"layer {result.index + 1}: {how}, test loss {loss:.4f}")

    def on_finetune_end(self, result: FinetuneResult) -> None:
        chosen = (f"validation accuracy {result.val_accuracy_before:.4f} -> {result.val_accuracy_after:.4f}"
                  if result.validated else f"{result.n_labeled} labeled rows, no validation split chose")
        self._say(
            f"fine-tuning: {chosen} ({result.kept} kept), "
            f"test {result.test_accuracy_before:.4f} -> {result.test_accuracy_after:.4f} ({result.seconds:.1f}s)"
        )
