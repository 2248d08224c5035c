"""How tracking and progress reporting plug into the pipeline without the pipeline knowing about them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytorch_lightning.callbacks import Callback

    from pipeline.config import PipelineConfig, ResolvedLayer
    from pipeline.data.loading import LoadedData
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.results import LayerResult, PretrainResult
    from sae.stack import StackedEncoder


class PipelineHooks:
    """No-op base: subclass and override what you need (MLflow tracking, progress printing, tests)."""

    def on_run_start(self, config: PipelineConfig, data: LoadedData) -> None:
        """Before the first layer trains."""

    def layer_logger(self, index: int, settings: ResolvedLayer) -> Any:
        """A Lightning logger for layer ``index`` (0-based), or None."""
        return None

    def layer_callbacks(self, index: int, settings: ResolvedLayer) -> list[Callback]:
        """Extra Lightning callbacks for layer ``index``."""
        return []

    def on_layer_end(self, result: LayerResult) -> None:
        """After layer ``result.index`` trained (or was reused from a cache) and its codes exist."""

    def finetune_logger(self) -> Any:
        """A Lightning logger for fine-tuning, or None."""
        return None

    def on_finetune_end(self, result: FinetuneResult) -> None:
        """After fine-tuning."""

    def on_encoders(self, data: LoadedData, encoder: StackedEncoder, finetuned: FinetuneResult | None) -> None:
        """The stacked encoder and its fine-tuned copy are final (trackers log the models here); the probes of
        the evaluation run on other threads meanwhile."""

    def on_run_end(self, result: PretrainResult) -> None:
        """After evaluation: the whole result is ready (trackers log it here)."""

    def on_register(self, result: PretrainResult) -> None:
        """After ``on_run_end``: register the result's encoder (trackers close their run here)."""

    def on_run_failed(self, error: BaseException) -> None:
        """The run raised (or was interrupted); ``error`` is re-raised after this returns."""


class CompositeHooks(PipelineHooks):
    """Calls several hooks in order; loggers and callbacks are collected from all of them."""

    def __init__(self, hooks: Sequence[PipelineHooks]) -> None:
        self.hooks = list(hooks)

    def on_run_start(self, config: PipelineConfig, data: LoadedData) -> None:
        for h in self.hooks:
            h.on_run_start(config, data)

    def layer_logger(self, index: int, settings: ResolvedLayer) -> Any:
        loggers = [lg for h in self.hooks if (lg := h.layer_logger(index, settings)) is not None]
        return loggers or None

    def layer_callbacks(self, index: int, settings: ResolvedLayer) -> list[Callback]:
        return [cb for h in self.hooks for cb in h.layer_callbacks(index, settings)]

    def on_layer_end(self, result: LayerResult) -> None:
        for h in self.hooks:
            h.on_layer_end(result)

    def finetune_logger(self) -> Any:
        loggers = [lg for h in self.hooks if (lg := h.finetune_logger()) is not None]
        return loggers or None

    def on_finetune_end(self, result: FinetuneResult) -> None:
        for h in self.hooks:
            h.on_finetune_end(result)

    def on_encoders(self, data: LoadedData, encoder: StackedEncoder, finetuned: FinetuneResult | None) -> None:
        for h in self.hooks:
            h.on_encoders(data, encoder, finetuned)

    def on_run_end(self, result: PretrainResult) -> None:
        for h in self.hooks:
            h.on_run_end(result)

    def on_register(self, result: PretrainResult) -> None:
        for h in self.hooks:
            h.on_register(result)

    def on_run_failed(self, error: BaseException) -> None:
        for h in self.hooks:
            h.on_run_failed(error)
