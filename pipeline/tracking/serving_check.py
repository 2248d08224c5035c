"""MLflow's serving check on a logged model, done once a run instead of once a model.

``Model.log`` reloads every model it logs from the files it just wrote (``mlflow.pyfunc.load_model``: the MLmodel
YAML, the model code, the weights) and predicts its serving input example with it: 0.5 s a model here, half of
logging one. A run logs two encoders with the same bundled code, signature and input example (the pretrained
and the fine-tuned stack; only their weights differ), so the check on the first covers how the second loads
and serves. ``skipped()`` leaves the check out for the models logged in the block on this thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_SKIP = threading.local()
_INSTALL = threading.Lock()


def _unless_skipped(check: Callable[..., Any]) -> Callable[..., Any]:
    def validate_serving_input(*args: Any, **kwargs: Any) -> Any:
        return None if getattr(_SKIP, "on", False) else check(*args, **kwargs)

    validate_serving_input.sae_wraps = check  # type: ignore[attr-defined]
    return validate_serving_input


@contextmanager
def skipped() -> Iterator[None]:
    """MLflow's serving-input check (``mlflow.models.utils._validate_serving_input``, private: mlflow is pinned)
    is skipped for models this thread logs in the block."""
    from mlflow.models import utils

    with _INSTALL:  # Model.log imports the name from the module at each call: wrap it there, once
        if not hasattr(utils._validate_serving_input, "sae_wraps"):
            utils._validate_serving_input = _unless_skipped(utils._validate_serving_input)
    _SKIP.on = True
    try:
        yield
    finally:
        _SKIP.on = False
