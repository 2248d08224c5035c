"""The label-efficiency flow: load the data, pretrain through the layer cache (a task per layer, exactly as the
pretrain flow's: a layer already trained for the same data and settings is reused), fit the anchors' shared
parts, then one task per label budget. ``pipeline.run.curve`` owns the steps; MLflow gets a parent run with a
child run per budget (``pipeline.tracking.curve_runs``), the flow run the table and a link to that run.
"""

# No `from __future__ import annotations`: Prefect builds the flow's parameter model from real annotations.
import sys
from collections.abc import Callable
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.artifacts import artifact_key, current_flow_run_tags, current_origin, publish_run_link
from flows.pretrain import ONCE, CachedLayers, Chain, _as_config, load_data_task
from flows.session import current_session
from pipeline.app.progress import ProgressPrinter
from pipeline.config import PipelineConfig
from pipeline.data.budgets import Budget, budget_name
from pipeline.data.loading import LoadedData
from pipeline.evaluation.anchors import AnchorFeatures, fit_anchor_features
from pipeline.run import layer_store
from pipeline.run.curve import METHODS, BudgetResult, CurveHooks, CurveResult, CurveSteps, label_curve
from pipeline.tables import markdown_table
from pipeline.tracking.curve_runs import CurveTracking, curve_run_name


@task(name="fit-anchors", task_run_name="fit-anchors", **ONCE)
def anchors_task(data: LoadedData, seed: int) -> AnchorFeatures:
    """Scale the pretraining rows to [0, 1] and fit the anchors' BernoulliRBM on them (once for every budget)."""
    return fit_anchor_features(data, seed)


@task(name="budget", **ONCE)
def budget_task(budget: Budget, run: Callable[[Budget], BudgetResult]) -> BudgetResult:
    """Every draw of one label budget: probe, fine-tuning and anchors on the drawn rows."""
    return run(budget)


class CurveProgress(CurveHooks):
    """One line on stderr per budget."""

    def on_budget_end(self, result: BudgetResult) -> None:
        parts = []
        for method in METHODS[:2]:
            stats = result.mean_std(method)
            if stats is not None:
                parts.append(f"{method} {stats[0]:.3f}" + (f" ± {stats[1]:.3f}" if stats[1] is not None else ""))
        seconds = sum(d.seconds for d in result.draws)
        print(f"labels {result.name} a class ({len(result.draws)} draw(s), {seconds:.1f}s): {', '.join(parts)}",
              file=sys.stderr, flush=True)


class Hooks(CurveHooks):
    """Several curve hooks, called in order."""

    def __init__(self, *hooks: CurveHooks) -> None:
        self.hooks = hooks

    def on_curve_start(self, *args: Any) -> None:
        for h in self.hooks:
            h.on_curve_start(*args)

    def on_budget_end(self, result: BudgetResult) -> None:
        for h in self.hooks:
            h.on_budget_end(result)

    def on_curve_end(self, result: CurveResult) -> None:
        for h in self.hooks:
            h.on_curve_end(result)

    def on_curve_failed(self, error: BaseException) -> None:
        for h in self.hooks:
            h.on_curve_failed(error)


def run_name() -> str:
    """Flow run name ``curve-<config name>-<time>``; the MLflow parent run gets the same name."""
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, PipelineConfig) else dict(config or {}).get("name", "sae")
    return curve_run_name(name)


@flow(name="sae-curve", flow_run_name=run_name, persist_result=False, validate_parameters=True)
def curve_flow(config: PipelineConfig, labels: list[int | None], repeats: int = 3, refresh_cache: bool = False,
               overrides: list[str] | None = None) -> CurveResult:
    """Pretrain ``config``'s stack once (layer cache) and score each budget of ``labels`` (labels a class; None:
    every labeled row) over ``repeats`` seeded draws, beside the anchors; record it in MLflow."""
    config = _as_config(config)
    session = current_session()
    chain, progress = Chain(), ProgressPrinter()
    layers = CachedLayers(config, progress, refresh_cache, chain)
    name = flow_run.get_name()
    tracking = CurveTracking(run_name=name, run_tags=current_flow_run_tags(), overrides=tuple(overrides or ()),
                             origin=current_origin(name))
    last = f"train-layer-{len(config.layers)}"
    done: list[str] = [last]

    def load(config: PipelineConfig) -> LoadedData:
        data = chain.run(load_data_task, "load-data", config, session.data_of(config))
        layers.fingerprint = layer_store.input_fingerprint(data)
        progress.on_run_start(config, data)
        return data

    def budget(budget: Budget, run: Callable[[Budget], BudgetResult]) -> BudgetResult:
        name = f"budget-{budget_name(budget)}"
        result = chain.run(budget_task, name, budget, run, after=(done[-1],))
        done.append(name)
        return result

    steps = CurveSteps(load=load, layer=layers, budget=budget,
                       anchors=lambda data, seed: chain.run(anchors_task, "fit-anchors", data, seed, after=(last,)))
    result = label_curve(config, list(labels), repeats, steps=steps, hooks=Hooks(tracking, CurveProgress()))
    if result.run_id is not None and result.tracking_uri is not None:
        publish_run_link(config.name, result.tracking_uri, tracking.experiment_id, result.run_id, tracking.run_name)
    create_markdown_artifact(key=artifact_key(config.name, "curve"),
                             markdown=f"# {config.name}: label efficiency on {result.data.source}\n\n"
                             f"{result.note()}\n\n{markdown_table(result.rows())}\n",
                             description="Test accuracy against labels per class: the stack and the anchors")
    return result
