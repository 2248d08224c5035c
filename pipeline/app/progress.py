"""Live progress on stderr: one line per layer epoch, one per finished layer."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

from pipeline.run.hooks import PipelineHooks

if TYPE_CHECKING:
    from pytorch_lightning.callbacks import Callback

    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.greedy import LayerResult


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
        from pipeline.app.epoch_line import (
            EpochLine,  # asked for only when a layer trains: Lightning is loaded
        )

        return [EpochLine(f"layer {index + 1}/{self.n_layers or '?'}", settings.epochs, self.stream)]

    def on_layer_end(self, result: LayerResult) -> None:
        how = "reused from cache" if result.reused else f"trained in {result.seconds:.1f}s"
        loss = result.test_metrics.get("loss", float("nan"))
        self._say(f"layer {result.index + 1}: {how}, test loss {loss:.4f}")

    def on_finetune_end(self, result: FinetuneResult) -> None:
        chosen = (f"validation accuracy {result.val_accuracy_before:.4f} -> {result.val_accuracy_after:.4f}"
                  if result.validated else f"{result.n_labeled} labeled rows, no validation split chose")
        self._say(
            f"fine-tuning: {chosen} ({result.kept} kept), "
            f"test {result.test_accuracy_before:.4f} -> {result.test_accuracy_after:.4f} "
            + ("(reused from cache)" if result.reused else f"({result.seconds:.1f}s)")
        )
