"""MLflow records of a search: a parent run, a child run per layer, a nested run per trial.

The parent carries each layer's objective-vs-trial and parameter-importance plots, the trial table and the
best config (``best.yaml``). Trial runs end FINISHED (complete), KILLED (pruned) or FAILED, with the state
also as the tag ``sae.trial.state``. The best stack itself is recorded by the pretrain run (``run``'s own
tracking and registration); the two point at each other through tags.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.tracking import describe, notes, store, uris
from pipeline.tracking.markdown import link
from pipeline.tracking.tune_recall import RecalledStack, recall_stack, remember_stack, stack_digest
from pipeline.tune.search import TuneHooks
from pipeline.tune.table import search_table

if TYPE_CHECKING:
    import optuna

    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.tune.result import LayerSearch, TuneResult
    from pipeline.tune.trial import TrialOutcome

log = logging.getLogger(__name__)
OPTUNA_DB = "optuna.db"
RUN_STATUS = {"complete": RunStatus.FINISHED, "pruned": RunStatus.KILLED, "failed": RunStatus.FAILED}


def optuna_storage(config: PipelineConfig) -> str:
    """search.storage, else ``optuna.db`` beside the MLflow sqlite database, else in cache_dir."""
    if config.search is not None and config.search.storage:
        return config.search.storage
    db = uris.sqlite_path(uris.resolve_tracking_uri(config.tracking_uri))
    directory = db.parent if db is not None else Path(config.cache_dir).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / OPTUNA_DB}"


class TuneTracking(TuneHooks):
    """Records a search in MLflow with an explicit client and run ids (safe from any thread)."""

    def __init__(self, tracking_uri: str | None = None, *, run_name: str | None = None,
                 run_tags: dict[str, str] | None = None, origin: notes.Origin | None = None) -> None:
        self.configured_uri = tracking_uri
        self.run_name = run_name  # None: tune-<config name>-<time>; the Prefect flow run's name under Prefect
        self.run_tags = dict(run_tags or {})  # e.g. the Prefect flow run's id
        self.origin = origin or notes.Origin()  # the Prefect flow run: linked from the description
        self.client: Any = None
        self.run_id: str | None = None
        self.experiment_id = ""
        self.uri = ""
        self.data_fingerprint = ""
        self.objective = ""
        self.trials = 0  # asked per layer
        self.layer_runs: dict[int, str] = {}
        self.best_objectives: dict[str, float] = {}  # the parent's per-layer metrics, logged at the end
        self.best_run_text: str | None = None  # markdown: the best stack's run, once the search ended

    def on_search_start(self, config: PipelineConfig, data: LoadedData, objective: str) -> None:
        """Open the parent run ``tune-<name>-<time>`` with the config, the search settings and a description."""
        uri = self.uri = uris.resolve_tracking_uri(self.configured_uri or config.tracking_uri)
        self.client = store.client(uri)
        self.experiment_id = store.experiment_id(self.client, uri, config.name, {
            "mlflow.experimentKind": "custom_model_development", MLFLOW_RUN_NOTE: notes.experiment_note(config.name)})
        self.data_fingerprint, self.objective = str(data.fingerprint), objective
        assert config.search is not None
        self.trials = config.search.trials
        self.run_name = self.run_name or describe.run_name(f"tune-{config.name}")
        tags = {MLFLOW_RUN_NAME: self.run_name, "sae.kind": "tune", "sae.data.source": str(data.source),
                "sae.data.hash": str(data.fingerprint)[:store.DIGEST_CHARS],
                MLFLOW_RUN_NOTE: notes.tune_start(config, self.trials, objective, self.origin), **self.run_tags}
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=resolve_tags(tags))
        self.run_id = run.info.run_id
        search = {f"search.{k}": v for k, v in config.search.model_dump(mode="json", exclude={"defaults", "layers"}).items()}
        self._params(self.run_id, {**search, "search.objective": objective, "layers": len(config.layers)})
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")

    def run_url(self) -> str:
        """The search run's page: absolute on a tracking server, else the UI's own path."""
        assert self.run_id is not None
        page = uris.run_page(self.experiment_id, self.run_id)
        return f"{self.uri.rstrip('/')}/{page}" if uris.is_server(self.uri) else page

    def search_line(self) -> str:
        """Markdown for the best stack's run: the search whose best config it is, linked."""
        return f"the best config of search {link(self.run_name or 'tune', self.run_url())}"

    def on_layer_start(self, index: int, study_name: str) -> None:
        """Open child run ``tune-layer-N``, tagged with its Optuna study."""
        assert self.run_id is not None
        self.layer_runs[index] = self._run(f"tune-layer-{index + 1}", self.run_id, {"sae.study": study_name})

    def on_trial_end(self, index: int, outcome: TrialOutcome) -> None:
        """A nested run per trial: params, per-epoch metrics and objective reports, final objective, state."""
        parent = self.layer_runs[index]
        run_id = self._run(f"trial-{index + 1}.{outcome.number + 1}", parent, {
            "sae.trial.state": outcome.state, "sae.recalled": str(outcome.recalled).lower(),
            "sae.layer.key": outcome.key, MLFLOW_RUN_NOTE: notes.trial_note(index, outcome, self.objective),
            **({"error": outcome.error[:5000]} if outcome.error else {})})
        now = int(time.time() * 1000)
        # The layer runs' charts, epochs counted from 1; the pruner's reports as val_objective at the same steps.
        metrics = describe.epoch_points(outcome.history, now)
        metrics += [Metric("val_objective", value, now, epoch + 1) for epoch, value in outcome.reports]
        if outcome.value is not None:
            metrics += describe.summary_points({"objective": outcome.value})
        params = [Param(k, describe.param_value(v)) for k, v in outcome.params.items()]
        for start in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], params=params if not start else [])
        self.client.set_terminated(run_id, RunStatus.to_string(RUN_STATUS[outcome.state]))

    def on_layer_end(self, layer: LayerSearch, study: optuna.Study) -> None:
        """Best trial on the layer run; the layer's plots on the parent; close the layer run."""
        from pipeline.tune.plots import objective_vs_trial, param_importance

        assert self.run_id is not None
        run_id, number = self.layer_runs.pop(layer.index), layer.index + 1
        best = layer.best
        self.client.log_batch(run_id, metrics=describe.summary_points({"best_objective": float(best.value or 0),
                                                                        "trials": float(len(layer.trials))}),
                              params=[Param(f"best.{k}", describe.param_value(v)) for k, v in best.params.items()],
                              tags=[RunTag("sae.best_trial", str(best.number + 1)), RunTag("sae.layer.key", layer.best_key)])
        with tempfile.TemporaryDirectory(prefix="sae-tune-") as tmp:
            objective_vs_trial(study, Path(tmp) / f"layer-{number}-objective.png", title=f"layer {number}")
            param_importance(study, Path(tmp) / f"layer-{number}-importance.png", title=f"layer {number}")
            self.client.log_artifacts(self.run_id, tmp, "plots")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        self.best_objectives[f"layer_{number}.best_objective"] = float(best.value or 0)  # logged with the rest

    def on_search_end(self, result: TuneResult) -> None:
        """best.yaml, the trial table, the description linking the best stack's run; close the parent FINISHED."""
        assert self.run_id is not None
        self.client.log_text(self.run_id, result.best_yaml(), "best.yaml")
        self.client.log_text(self.run_id, search_table(result) + "\n", "trials.txt")
        stack = result.best_stack
        tracked = stack.tracked if stack is not None else None
        best_run, tags = None, []
        if stack is not None and tracked is not None:
            name = self.client.get_run(tracked.run_id).info.run_name
            url = tracked.run_url or uris.run_page(tracked.experiment_id, tracked.run_id)
            best_run = notes.best_stack_text(name, url, stack.headline(), tracked.registration, stack.recalled)
            self.best_run_text = notes.best_stack_text(  # for pages outside MLflow: an absolute link
                name, uris.run_page_url(self.uri, tracked.experiment_id, tracked.run_id), stack.headline(),
                tracked.registration, stack.recalled)
            tags = [RunTag("sae.best_run", tracked.run_id), RunTag("sae.recalled", str(stack.recalled).lower())]
            if not stack.recalled:  # a recalled run keeps pointing at the search that ran it
                remember_stack(self.client, stack, stack_digest(result.best_config, self.data_fingerprint),
                               {"sae.tune_run": self.run_id})
        tags.append(RunTag(MLFLOW_RUN_NOTE, notes.tune_end(result, self.trials, self.origin, best_run)))
        self.client.log_batch(self.run_id, metrics=describe.summary_points(
            {**self.best_objectives, "seconds": result.seconds}), tags=tags)
        self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FINISHED))
        self.run_id = None

    def recall(self, best_config: PipelineConfig) -> RecalledStack | None:
        """The best stack as an identical earlier search left it in MLflow (see ``tune_recall``), if it did."""
        assert self.client is not None, "recall after on_search_start"
        return recall_stack(self.client, self.experiment_id, self.uri, stack_digest(best_config, self.data_fingerprint))

    def on_search_failed(self, error: BaseException) -> None:
        """Close open layer runs and the parent as a run's are closed: KILLED after Ctrl-C, FAILED otherwise,
        the error (or the signal) as a tag."""
        if self.run_id is None:
            return
        try:
            status, message, interrupted = describe.failure(error)
            tags = [RunTag("error", message), RunTag("sae.interrupted", str(interrupted).lower())]
            for run_id in [*self.layer_runs.values(), self.run_id]:
                self.client.log_batch(run_id, tags=tags)
                self.client.set_terminated(run_id, status)
        except Exception as problem:  # noqa: BLE001 - never hide the search's own error behind ours
            log.warning("could not record the failure in MLflow: %s", problem)
        self.layer_runs, self.run_id = {}, None

    def _run(self, name: str, parent: str, tags: dict[str, str]) -> str:
        tags = {MLFLOW_PARENT_RUN_ID: parent, MLFLOW_RUN_NAME: name, **tags}
        return self.client.create_run(self.experiment_id, run_name=name, tags=resolve_tags(tags)).info.run_id

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(run_id, params=[Param(k, describe.param_value(v)) for k, v in params.items()])
