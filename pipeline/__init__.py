"""Plain-Python pipeline: config, data, greedy stacking, evaluation, tracking and export."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.errors import InputError
    from pipeline.run.greedy import pretrain_stack
    from pipeline.run.hooks import PipelineHooks
    from pipeline.run.results import PretrainResult
    from pipeline.serving.transformer import SAETransformer

# Resolved on first use so that `sae-pipeline --help` does not pay for importing torch and Lightning.
_EXPORTS = {
    "InputError": "pipeline.errors",
    "PipelineConfig": "pipeline.config",
    "PipelineHooks": "pipeline.run.hooks",
    "PretrainResult": "pipeline.run.results",
    "SAETransformer": "pipeline.serving.transformer",
    "pretrain_stack": "pipeline.run.greedy",
}
__all__ = ["InputError", "PipelineConfig", "PipelineHooks", "PretrainResult", "SAETransformer", "pretrain_stack"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
