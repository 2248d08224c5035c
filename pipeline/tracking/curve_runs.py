"""MLflow record of a label-efficiency curve: a parent run and a child run per label budget.

The parent (``curve-<name>-<time>``, tag ``sae.kind=curve``) carries the config, the data's row counts as params
and dataset inputs (context ``unlabeled`` for rows without labels), the table (``curve.txt``, ``curve.md``, and
markdown in the description), ``curve.json`` and the plot ``plots/label_efficiency.png``. Each budget's child
(``labels-10`` ... ``labels-all``) holds per method the mean and standard deviation over the draws
(``<method>.mean``, ``<method>.std``) and each draw's accuracy (``<method>`` at step = draw number), plus the
labeled rows and seeds of its draws.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.data.budgets import budget_name
from pipeline.run.curve import METRIC_KEYS, BudgetResult, CurveHooks, CurveResult
from pipeline.tables import markdown_table
from pipeline.tracking import describe, markdown, notes, store, uris
from pipeline.tracking.runs import EXPERIMENT_KIND, MODEL_TRAINING
from pipeline.tracking.stale import close_stale_runs, process_tags

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.budgets import Budget
    from pipeline.data.loading import LoadedData

log = logging.getLogger(__name__)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


def curve_run_name(config_name: str) -> str:
    """``curve-<config name>-<time>``: the parent run's and the Prefect flow run's name."""
    return describe.run_name(f"curve-{config_name}")


class CurveTracking(CurveHooks):
    """Records a curve in MLflow with an explicit client and run ids."""

    def __init__(self, tracking_uri: str | None = None, *, run_name: str | None = None,
                 run_tags: Mapping[str, str] | None = None, overrides: tuple[str, ...] = (),
                 origin: notes.Origin | None = None) -> None:
        self.configured_uri, self.requested_name = tracking_uri, run_name
        self.run_tags, self.overrides = dict(run_tags or {}), tuple(overrides)
        self.origin = origin or notes.Origin()  # the Prefect flow run: linked from the description
        self.client: Any = None
        self.uri = self.experiment_id = ""
        self.run_id: str | None = None
        self.run_name = ""

    def on_curve_start(self, config: PipelineConfig, data: LoadedData, budgets: list[Budget], repeats: int) -> None:
        """Open the parent run: params (config, row counts, budgets), dataset inputs, the config file."""
        self.uri = uris.resolve_tracking_uri(self.configured_uri or config.tracking_uri)
        self.client = store.client(self.uri)
        self.experiment_id = store.experiment_id(self.client, self.uri, config.name, {
            EXPERIMENT_KIND: MODEL_TRAINING, MLFLOW_RUN_NOTE: notes.experiment_note(config.name)})
        close_stale_runs(self.client, self.experiment_id)
        self.run_name = self.requested_name or curve_run_name(config.name)
        labels = ",".join(budget_name(b) for b in budgets)
        note = (f"**{config.name}**: label-efficiency curve on `{data.source}`, labels a class {labels}, "
                f"{repeats} draw(s) a budget: running.\n\n{notes.overrides_text(self.overrides)}\n")
        tags = {"sae.kind": "curve", "sae.data.source": str(data.source),
                "sae.data.hash": str(data.fingerprint)[:store.DIGEST_CHARS],
                MLFLOW_RUN_NOTE: self._linked(note), **process_tags(), **self.run_tags}
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=resolve_tags(tags))
        self.run_id = run.info.run_id
        params = describe.run_params(config) | {f"data.rows.{k}": v for k, v in data.counts().items()}
        params |= {"curve.labels": labels, "curve.repeats": repeats}
        self._params(self.run_id, params)
        self.client.log_inputs(self.run_id, datasets=store.dataset_inputs(data))
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")

    def on_budget_end(self, result: BudgetResult) -> None:
        """A child run ``labels-<budget>``: per method the mean, the spread and every draw."""
        assert self.run_id is not None
        tags = {MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: f"labels-{result.name}"}
        child = self.client.create_run(self.experiment_id, run_name=tags[MLFLOW_RUN_NAME], tags=resolve_tags(tags))
        run_id = child.info.run_id
        metrics = describe.summary_points({"labeled_rows": sum(d.n_labeled for d in result.draws) / len(result.draws)})
        for method, key in METRIC_KEYS.items():
            stats = result.mean_std(method)
            if stats is None:
                continue
            metrics += describe.summary_points({f"{key}.mean": stats[0], **({f"{key}.std": stats[1]}
                                                                           if stats[1] is not None else {})})
            now = int(time.time() * 1000)
            metrics += [Metric(key, value, now, step) for step, value in enumerate(result.values(method))]
        params = {"labels_per_class": result.name, "draws": len(result.draws),
                  "seeds": json.dumps([d.seed for d in result.draws]),
                  "labeled_rows": json.dumps([d.n_labeled for d in result.draws])}
        self.client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        self.client.set_terminated(run_id, FINISHED)

    def on_curve_end(self, result: CurveResult) -> None:
        """The table, JSON and plot on the parent; the table in its description; close it FINISHED."""
        # matplotlib is slow to import: only when a curve is logged
        from pipeline.tracking.curve_plot import label_efficiency_plot

        assert self.run_id is not None
        result.run_id, result.tracking_uri, result.experiment_id = self.run_id, self.uri, self.experiment_id
        with tempfile.TemporaryDirectory(prefix="sae-curve-") as tmp:
            folder = Path(tmp)
            (folder / "curve.txt").write_text(result.table() + "\n")
            (folder / "curve.md").write_text(markdown_table(result.rows()) + "\n")
            (folder / "curve.json").write_text(json.dumps(result.to_json(), indent=1))
            label_efficiency_plot(result, folder / "plots" / "label_efficiency.png")
            self.client.log_artifacts(self.run_id, tmp)
        self.client.log_batch(self.run_id, metrics=describe.summary_points(
            {describe.SECONDS: result.seconds, "pretrain_seconds": result.pretrain_seconds}))
        note = (f"**{result.config.name}**: label-efficiency curve on `{result.data.source}`.\n\n"
                f"{notes.overrides_text(self.overrides)}\n\n{_sentence(result.note())}\n\n"
                f"{markdown.table(result.rows())}\n\nPlot: `plots/label_efficiency.png`; every draw: `curve.json` "
                "and the `labels-*` child runs.\n")
        self.client.set_tag(self.run_id, MLFLOW_RUN_NOTE, self._linked(note))
        self.client.set_terminated(self.run_id, FINISHED)
        self.run_id = None

    def on_curve_failed(self, error: BaseException) -> None:
        """Close the parent FAILED (KILLED after Ctrl-C) with the error as a tag."""
        if self.run_id is None:
            return
        try:
            status, message, interrupted = describe.failure(error)
            self.client.log_batch(self.run_id, tags=[RunTag("error", message),
                                                     RunTag("sae.interrupted", str(interrupted).lower())])
            self.client.set_terminated(self.run_id, status)
        except Exception as problem:  # noqa: BLE001 - never hide the curve's own error behind ours
            log.warning("could not record the failure in MLflow: %s", problem)
        self.run_id = None

    def _linked(self, note: str) -> str:
        """``note`` with the Prefect flow run's link after its first line (one click from the description)."""
        head, _, rest = note.partition("\n\n")
        return "\n\n".join([head, *self.origin.lines(), rest]) if self.origin.lines() else note

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(str(k), describe.param_value(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."
