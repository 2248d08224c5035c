"""Prefect flows, schedules and deployments around the plain-Python pipeline (the only prefect importers)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.pretrain import pretrain_flow
    from flows.tune import tune_flow

# Resolved on first use: the console entry (flows.cli) must run its setup before Prefect and torch load.
_EXPORTS = {"pretrain_flow": "flows.pretrain", "tune_flow": "flows.tune"}
__all__ = ["pretrain_flow", "tune_flow"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
