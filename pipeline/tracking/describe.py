"""What a run shows in the MLflow UI: its params (one spelling for nulls and booleans), its metric keys and
points, and its markdown description.

Metric rules, from how the MLflow 3 UI draws charts: a metric whose last step is 0 is a bar (a summary), any
other is a line; keys with a ``/`` form a chart section named by the prefix, and sections come before the
unprefixed "Model metrics". So summaries (the headline, test metrics, wall time) are logged once at step 0,
the headline under ``headline/`` so its section comes first on the parent, per-layer test metrics under
``test/`` on the layer's own run, and epoch series at step = epoch number (1-based) without ``epoch``
itself. Epoch series start at epoch 2: the first epoch's mean averages over the untrained start (often many
times the rest) and on MLflow's linear y-axis flattens every later point; the full history, first epoch
included, is the child run's ``history.json`` and its log-scale ``loss_curve.png``.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, RunStatus

from pipeline.process import interrupts
from pipeline.tables import markdown_table

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.run.results import PretrainResult, Registration

HEADLINE, TEST, SECONDS = "headline/", "test/", "seconds"
FIRST_CHARTED_EPOCH = 2  # 1-based: the first epoch is left out of the live charts (see the module docstring)


def run_name(name: str) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>``: what ran and when (MLflow runs and Prefect flow runs share it)."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


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


def epoch_points(rows: Iterable[Mapping[str, float]], now: int | None = None) -> list[Metric]:
    """Epoch-series points: step = 1-based epoch, from FIRST_CHARTED_EPOCH on, ``epoch`` not a metric."""
    now = int(time.time() * 1000) if now is None else now
    points = []
    for i, row in enumerate(rows):
        step = int(row.get("epoch", i)) + 1
        if step >= FIRST_CHARTED_EPOCH:
            points += [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch" and not isinstance(v, str)]
    return points


def summary_points(values: Mapping[str, float]) -> list[Metric]:
    """Summary metrics: one point each at step 0 (the UI draws them as bars, not one-dot lines)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items()]


def layer_summary(test_metrics: Mapping[str, float], seconds: float) -> dict[str, float]:
    """A layer run's summary: its test-split metrics under ``test/`` and its wall time."""
    return {f"{TEST}{k}": float(v) for k, v in test_metrics.items()} | {SECONDS: float(seconds)}


def parent_summary(result: PretrainResult) -> dict[str, float]:
    """The parent's metrics: the headline first (own section), the probe accuracies, the wall time.

    Per-layer and fine-tuning numbers live on their child runs only (no duplicated series); the results
    table in the description shows them side by side.
    """
    name, value, _ = result.headline()
    out = {f"{HEADLINE}{name}": float(value)}
    out |= {f"probe_accuracy.{k}": float(v) for k, v in result.probes.items() if f"probe_accuracy.{k}" != name}
    return out | {SECONDS: float(result.seconds)}


def overrides_text(overrides: Sequence[str]) -> str:
    """The ``--set`` overrides as markdown code, or a note that the config ran as written."""
    if not overrides:
        return "Overrides: none (the config as written)."
    return "Overrides: " + " ".join(f"`--set {o}`" for o in overrides)


def start_description(config: PipelineConfig, source: str, overrides: Sequence[str]) -> str:
    """The description while the run is going."""
    return (f"**{config.name}** on `{source}`: {len(config.layers)} layers, running.\n\n"
            f"{overrides_text(overrides)}\n")


def end_description(result: PretrainResult, overrides: Sequence[str], registration: Registration | None) -> str:
    """The final description: headline, registry outcome, overrides, results table."""
    name, value, greater = result.headline()
    better = "higher" if greater else "lower"
    lines = [f"**{name} = {value:.6g}** ({better} is better)", ""]
    if registration is None:
        lines.append("Registry: not registered (tracking only).")
    elif registration.new_version:
        lines.append(f"Registry: `{registration.model_name}` version {registration.model_version} "
                     f"@{registration.alias}: {registration.reason}.")
    else:
        lines.append(f"Registry: `{registration.model_name}` unchanged: {registration.reason}.")
    lines += ["", overrides_text(overrides), "", result.data.counts_line().capitalize() + ".", "",
              markdown_table(result.rows())]
    return "\n".join(lines) + "\n"


def failed_description(config: PipelineConfig, source: str, overrides: Sequence[str], error: BaseException) -> str:
    """The description of a run that raised."""
    return (f"**{config.name}** on `{source}`: **failed**: `{type(error).__name__}: {str(error)[:300]}`\n\n"
            f"{overrides_text(overrides)}\n")


def failure(error: BaseException) -> tuple[str, str, bool]:
    """How a run that raised ``error`` ends: (MLflow status, the ``error`` tag, interrupted?). Ctrl-C is KILLED,
    SIGTERM and everything else FAILED; a signal is named rather than the exception it became."""
    signum = interrupts.signal_of(error)
    status = RunStatus.to_string(RunStatus.KILLED if signum == signal.SIGINT else RunStatus.FAILED)
    message = f"{type(error).__name__}: {error}" if signum is None else f"interrupted by {signal.Signals(signum).name}"
    return status, message[:5000], signum is not None or isinstance(error, KeyboardInterrupt | SystemExit)
