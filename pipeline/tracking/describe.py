"""What a run shows in the MLflow UI: its params (one spelling for nulls and booleans) and its metric keys and
points; the markdown descriptions are ``pipeline.tracking.notes``.

Metric rules, from how the MLflow 3 UI draws a run's charts (one section, alphabetical, three to a row; a
metric whose last step is 0 is a bar, any other a line): epoch series are logged at step = epoch number,
counted from 1 everywhere (layers, fine-tuning, trials; step 0 is "before training" where there is such a
point), and only the few that say whether a layer trained well (``CHARTED``: training and validation loss,
then FVU, L0 and the mean activation on the validation split, or on the training split when there is none).
The rest of each epoch is in the child run's ``history.json``; single numbers (a layer's test split) are in
the run's description, not charts. Summary metrics are one point at step 0, rounded to a few digits, the
parent's headline under ``headline/`` so its section comes first.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, RunStatus

from pipeline.process import interrupts
from pipeline.tracking import markdown

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.results import PretrainResult

HEADLINE, SECONDS = "headline/", "seconds"
SERIES_DIGITS = 6  # significant digits of an epoch series' points: enough for any chart, not 16 in the tables
Charts = tuple[tuple[str, ...], tuple[str, ...]]  # (keys charted as they are, keys charted on validation)
LAYER_CHARTS: Charts = (("loss", "val_loss"), ("fvu", "l0", "rho_hat_mean"))  # did the layer train well?
FINETUNE_CHARTS: Charts = (("loss", "accuracy", "val_accuracy"), ())


def run_name(name: str) -> str:
    """``<name>-<mmdd-HHMMSS>``: what ran and when (MLflow runs and Prefect flow runs share it). No year: the
    lists show the date beside it, and a shorter name is not cut off in MLflow's run list."""
    return f"{name}-{time.strftime('%m%d-%H%M%S')}"


def param_value(value: Any) -> str:
    """One spelling for every param: strings as they are, everything else as JSON (null, true, 0.003, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists stay values."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out |= flat(item, f"{prefix}{key}." if isinstance(item, dict) else f"{prefix}{key}")
    return out


def run_params(config: PipelineConfig) -> dict[str, str]:
    """The config once: every section but ``defaults``/``trainer``, then each layer's resolved settings."""
    data = config.model_dump(mode="json", exclude={"layers", "defaults", "trainer"})
    params = flat(data)
    for layer in config.resolved_layers():  # defaults and the trainer are folded into each layer here
        params |= flat(layer.model_dump(mode="json", exclude={"index"}), f"layers.{layer.index}.")
    return {key: param_value(value) for key, value in params.items()}


def layer_params(settings: Any) -> dict[str, str]:
    """A child run's own resolved settings (no index: the run name says which layer)."""
    return {key: param_value(value) for key, value in flat(settings.model_dump(mode="json", exclude={"index"})).items()}


def charted_keys(row: Mapping[str, Any], charts: Charts = LAYER_CHARTS) -> list[str]:
    """The keys of one history row that are charted: the first group as they are, the second on the validation
    split (``val_<key>``) when the row has it, else on the training split."""
    as_is, validated = charts
    return [k for k in as_is if k in row] + [f"val_{k}" if f"val_{k}" in row else k for k in validated
                                             if f"val_{k}" in row or k in row]


def epoch_points(rows: Iterable[Mapping[str, float]], now: int | None = None,
                 charts: Charts = LAYER_CHARTS) -> list[Metric]:
    """Epoch-series points of the charted keys (``charted_keys``): step = epoch number counted from 1, values to
    SERIES_DIGITS significant digits."""
    now = int(time.time() * 1000) if now is None else now
    points = []
    for i, row in enumerate(rows):
        step = int(row.get("epoch", i)) + 1
        points += [Metric(k, markdown.rounded(float(row[k]), SERIES_DIGITS), now, step)
                   for k in charted_keys(row, charts)]
    return points


def summary_points(values: Mapping[str, float]) -> list[Metric]:
    """Summary metrics: one point each at step 0 (the UI draws them as bars), rounded to a few digits."""
    now = int(time.time() * 1000)
    return [Metric(k, markdown.rounded(float(v)), now, 0) for k, v in values.items()]


def finetune_points(result: FinetuneResult) -> list[Metric]:
    """The fine-tuning run's summary: test accuracy before and after, the kept epoch (counted from 1; 0: the
    start was kept), each competing method's validation accuracy (``val_accuracy_semi``/``_supervised``) and
    ``val_accuracy`` at step 0, the frozen-codes softmax the epochs start from."""
    best = 0 if result.best_epoch is None else result.best_epoch + 1
    points = summary_points({"test_accuracy_before": result.test_accuracy_before,
                             "test_accuracy_after": result.test_accuracy_after, "best_epoch": best,
                             **{f"val_accuracy_{method}": value for method, value in result.candidates.items()}})
    return points + [Metric("val_accuracy", float(result.val_accuracy_before), points[0].timestamp, 0)]


def parent_summary(result: PretrainResult) -> dict[str, float]:
    """The parent's metrics: the headline first (own section), the probe accuracies, the wall time.

    Per-layer and fine-tuning numbers live on their child runs only (no duplicated series); the results
    table in the description shows them side by side.
    """
    name, value, _ = result.headline()
    out = {f"{HEADLINE}{name}": float(value)}
    out |= {f"probe_accuracy.{k}": float(v) for k, v in result.probes.items() if f"probe_accuracy.{k}" != name}
    return out | {SECONDS: float(result.seconds)}


def failure(error: BaseException) -> tuple[str, str, bool]:
    """How a run that raised ``error`` ends: (MLflow status, the ``error`` tag, interrupted?). Ctrl-C is KILLED,
    SIGTERM and everything else FAILED; a signal is named rather than the exception it became."""
    if interrupts.reason() is not None:  # stopped from another thread (the Prefect server it reports to died)
        return RunStatus.to_string(RunStatus.FAILED), str(interrupts.reason())[:5000], True
    signum = interrupts.signal_of(error)
    status = RunStatus.to_string(RunStatus.KILLED if signum == signal.SIGINT else RunStatus.FAILED)
    message = f"{type(error).__name__}: {error}" if signum is None else f"interrupted by {signal.Signals(signum).name}"
    return status, message[:5000], signum is not None or isinstance(error, KeyboardInterrupt | SystemExit)
