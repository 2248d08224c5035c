"""The label-efficiency curve: pretrain once, then for each label budget and draw score the top-layer probe, the
fine-tuned stack and the anchors on the same labeled rows.

The layers come from the ordinary loop (``greedy.train_layers``) with whatever layer step the caller passes (the
flow's reuses the layer cache), so one pretraining serves every budget. Each draw's data is the loaded data with
only the drawn rows keeping their labels (``pipeline.data.budgets``); the probe is the run's own
(``layer_probes.probe_test_accuracy``), the fine-tuning the run's own (``greedy.finetune_if_labelled``): whatever
they choose and how, the curve inherits. The test split is only scored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.data.budgets import Budget, budget_name, check_budgets, draw_budget
from pipeline.data.loading import LoadedData, load_data
from pipeline.evaluation.anchors import ANCHORS, AnchorFeatures, anchor_accuracies, fit_anchor_features
from pipeline.evaluation.layer_probes import probe_test_accuracy
from pipeline.evaluation.probes import probe_device
from pipeline.run.greedy import LayerStep, finetune_if_labelled, stack_encoder, train_layer, train_layers
from pipeline.run.hooks import PipelineHooks
from pipeline.run.results import LayerResult
from pipeline.tables import format_rows
from sae.stack import StackedEncoder

PROBE, FINETUNED = "SAE probe (top layer)", "SAE fine-tuned"
METHODS = (PROBE, FINETUNED, *ANCHORS)
# Each method's MLflow metric key (names there allow no parentheses or "+").
METRIC_KEYS = dict(zip(METHODS, ("sae_probe", "sae_finetuned", "logistic_raw", "svc_rbf", "label_spreading",
                                 "rbm_logistic"), strict=True))


@dataclass
class Draw:
    """One draw of one budget: its seed, how many rows kept a label, every method's test accuracy."""

    seed: int
    n_labeled: int  # labeled training + validation rows
    accuracies: dict[str, float]
    seconds: float = 0.0


@dataclass
class BudgetResult:
    """Every draw of one budget (one draw for ``all``: there is nothing to draw)."""

    budget: Budget
    draws: list[Draw]

    @property
    def name(self) -> str:
        return budget_name(self.budget)

    def values(self, method: str) -> list[float]:
        return [d.accuracies[method] for d in self.draws if method in d.accuracies]

    def mean_std(self, method: str) -> tuple[float, float | None] | None:
        """Mean and sample standard deviation over the draws (None for one draw); None when the method did not run."""
        values = self.values(method)
        if not values:
            return None
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


@dataclass
class CurveResult:
    """The whole curve: every budget's draws, the data it ran on, and where it was recorded."""

    config: PipelineConfig
    data: LoadedData
    budgets: list[BudgetResult]
    repeats: int
    seconds: float = 0.0
    pretrain_seconds: float = 0.0
    layers_reused: list[bool] = field(default_factory=list)
    run_id: str | None = None  # the MLflow parent run, once recorded
    tracking_uri: str | None = None
    experiment_id: str | None = None

    def methods(self) -> list[str]:
        """The methods that ran, in METHODS order."""
        return [m for m in METHODS if any(b.values(m) for b in self.budgets)]

    def rows(self) -> list[list[str]]:
        """Header (labels a class), the labeled rows, then one row per method: ``mean ± std`` over the draws."""
        rows = [["labels a class", *(b.name for b in self.budgets)],
                ["labeled rows", *(f"{int(np.mean([d.n_labeled for d in b.draws])):,}" for b in self.budgets)]]
        for method in self.methods():
            rows.append([method, *(_cell(b.mean_std(method)) for b in self.budgets)])
        return rows

    def note(self) -> str:
        """What the table is: the data's counts, the draws, the wall time."""
        draws = f"{self.repeats} draws a budget (seeds {self.config.seed}..{self.config.seed + self.repeats - 1}), " \
            "mean ± standard deviation" if self.repeats > 1 else f"one draw a budget (seed {self.config.seed})"
        reused = " (layers from the cache)" if self.layers_reused and all(self.layers_reused) else ""
        return (f"{self.data.counts_line()}; {draws}; test accuracy; pretraining {self.pretrain_seconds:.1f} s"
                f"{reused}, whole curve {self.seconds:.1f} s")

    def table(self) -> str:
        """The note, then the fixed-width table."""
        return "\n".join([self.note(), "", *format_rows(self.rows())])

    def summary(self) -> dict[str, dict[str, dict[str, object]]]:
        """method -> budget name -> {mean, std, values}: the table's numbers (for JSON and the plot)."""
        out: dict[str, dict[str, dict[str, object]]] = {}
        for method in self.methods():
            for b in self.budgets:
                stats = b.mean_std(method)
                if stats is not None:
                    out.setdefault(method, {})[b.name] = {"mean": stats[0], "std": stats[1], "values": b.values(method)}
        return out

    def to_json(self) -> dict[str, object]:
        """Everything ``curve --json`` prints."""
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id, "labels": [b.name for b in self.budgets],
                "repeats": self.repeats, "seconds": self.seconds, "pretrain_seconds": self.pretrain_seconds,
                "rows": self.data.counts(), "labeled_rows": {b.name: [d.n_labeled for d in b.draws] for b in self.budgets},
                "seeds": {b.name: [d.seed for d in b.draws] for b in self.budgets}, "accuracy": self.summary()}


def _cell(stats: tuple[float, float | None] | None) -> str:
    if stats is None:
        return ""
    mean, std = stats
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def draw_seeds(config: PipelineConfig, budget: Budget, repeats: int) -> list[int]:
    """The label draws' seeds: ``seed``, ``seed + 1``, ... (one for ``all``)."""
    return [config.seed + r for r in range(repeats if budget is not None else 1)]


def run_budget(config: PipelineConfig, data: LoadedData, layers: list[LayerResult], encoder: StackedEncoder,
               anchors: AnchorFeatures, budget: Budget, repeats: int) -> BudgetResult:
    """Every draw of ``budget``: the top-layer probe, the fine-tuned stack and the anchors on the drawn rows."""
    device = probe_device(config.trainer.accelerator)
    draws = []
    for seed in draw_seeds(config, budget, repeats):
        started = time.perf_counter()
        drawn = draw_budget(data, budget, seed)
        view = drawn.data
        top = layers[-1].codes  # the same splits in every view: the pretrained codes serve as they are
        accuracies = {PROBE: probe_test_accuracy(view, top, config.seed, device,
                                                 config.finetune.validate_from_per_class)}
        tuned = finetune_if_labelled(config, view, encoder, PipelineHooks(), top)
        if tuned is not None:
            accuracies[FINETUNED] = tuned.test_accuracy_after
        accuracies |= anchor_accuracies(anchors, drawn.rows, drawn.labels(), seed)
        n_labeled = view.labeled_rows("train").size + view.labeled_rows("val").size
        draws.append(Draw(seed, int(n_labeled), accuracies, time.perf_counter() - started))
    return BudgetResult(budget, draws)


class CurveHooks:
    """No-op base: what records a curve (MLflow, progress) overrides."""

    def on_curve_start(self, config: PipelineConfig, data: LoadedData, budgets: list[Budget], repeats: int) -> None:
        """The data is loaded and the budgets checked; nothing trained yet."""

    def on_budget_end(self, result: BudgetResult) -> None:
        """Every draw of one budget is scored."""

    def on_curve_end(self, result: CurveResult) -> None:
        """The whole curve is done (trackers log the table and plot here and fill ``result.run_id``)."""

    def on_curve_failed(self, error: BaseException) -> None:
        """The curve raised (or was interrupted); ``error`` is re-raised after this returns."""


BudgetStep = Callable[[Budget, Callable[[Budget], BudgetResult]], BudgetResult]


@dataclass
class CurveSteps:
    """How each step runs: plain calls by default; ``flows.curve`` makes tasks of them."""

    load: Callable[[PipelineConfig], LoadedData] = lambda config: load_data(config.data, config.seed)
    layer: LayerStep = lambda settings, inputs, seed, rows: train_layer(settings, inputs, seed=seed, fit_rows=rows)
    anchors: Callable[[LoadedData, int], AnchorFeatures] = fit_anchor_features
    budget: BudgetStep = lambda budget, run: run(budget)  # (budget, run it) -> its result


def label_curve(config: PipelineConfig, budgets: list[Budget], repeats: int, *, steps: CurveSteps | None = None,
                hooks: CurveHooks | None = None) -> CurveResult:
    """Pretrain ``config``'s stack once and score every budget (``repeats`` draws each) with the anchors beside."""
    steps, hooks = steps or CurveSteps(), hooks or CurveHooks()
    started = time.perf_counter()
    try:
        data = steps.load(config)
        check_budgets(data, budgets)
        hooks.on_curve_start(config, data, budgets, repeats)
        pretraining = time.perf_counter()
        layers = train_layers(config, data, steps.layer)
        encoder = stack_encoder(config, data, layers)
        pretrained = time.perf_counter() - pretraining
        anchors = steps.anchors(data, config.seed)

        def run(budget: Budget) -> BudgetResult:
            return run_budget(config, data, layers, encoder, anchors, budget, repeats)

        results = []
        for budget in budgets:
            results.append(steps.budget(budget, run))
            hooks.on_budget_end(results[-1])
        result = CurveResult(config, data, results, repeats, time.perf_counter() - started, pretrained,
                             [layer.reused for layer in layers])
        hooks.on_curve_end(result)
        return result
    except BaseException as error:
        hooks.on_curve_failed(error)
        raise
