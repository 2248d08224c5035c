"""MLflow tracking as pipeline hooks: a parent run per pipeline run, a child run per layer and for fine-tuning.

Only explicit run ids and an ``MlflowClient`` bound to the resolved tracking URI are used, so the hooks work
from any thread. Lightning logs epoch metrics into each child run through ``MLFlowLogger(run_id=...)``.
The parent is named ``<config name>-<time>`` (or the ``run_name`` given, e.g. the Prefect flow run's) and
described in markdown (``mlflow.note.content``): headline, registry outcome, ``--set`` overrides, results.
Each layer's child run gets its settings, charted epoch series, a description with its test numbers, weights,
history, plots and a loss image chart when the layer is recorded (keys: ``pipeline.tracking.describe``). On
success the pretrained stack is logged as pyfunc model ``encoder`` and, when fine-tuning ran, the fine-tuned
one as ``encoder-finetuned``; the one ``register.encoder`` picks (by validation accuracy) is registered with the
reason (``pipeline.tracking.registry``). A failure marks the open runs FAILED and registers nothing."""

from __future__ import annotations

import logging
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipeline.process import interrupts
from pipeline.process.rank import process_rank
from pipeline.run.degenerate import degenerate
from pipeline.run.hooks import PipelineHooks
from pipeline.run.results import TrackedRun
from pipeline.tracking import describe, notes, registry, run_files, serving_check, store, uris, versions
from pipeline.tracking.pyfunc import feature_names, log_encoder_model
from pipeline.tracking.stale import close_stale_runs, process_tags
from pipeline.tracking.store import dataset_inputs, git_commit, package_versions

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.run.finetune import FinetuneResult
    from pipeline.run.greedy import LayerResult
    from pipeline.run.results import PretrainResult
    from pipeline.tracking.epoch_logger import BufferedMLFlowLogger
    from sae.stack import StackedEncoder

log = logging.getLogger(__name__)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)
BATCH = 100  # params per log_batch call (MLflow's limit); metrics allow 1000
EXPERIMENT_KIND = "mlflow.experimentKind"  # the UI opens "custom_model_development" experiments on their runs
MODEL_TRAINING = "custom_model_development"


@interrupts.shield_methods("on_run_start", "layer_logger", "on_layer_end", "finetune_logger", "on_finetune_end",
                           "on_encoders", "on_run_end", "on_register")  # a signal waits for the store's writes
class MlflowTracking(PipelineHooks):
    """Records a pipeline run in MLflow (on rank 0) and registers its encoder; ``register=False`` only logs.
    Every hook is a no-op while no parent run is open: before on_run_start, and on ranks other than 0."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        register: bool = True,
        experiment: str | None = None,
        run_name: str | None = None,
        run_tags: Mapping[str, str] | None = None,
        overrides: Sequence[str] = (),
        origin: notes.Origin | None = None,
    ) -> None:
        self.configured_uri, self.register, self.experiment = tracking_uri, register, experiment
        self.requested_name = run_name  # None: "<config name>-<time>"
        self.run_name: str | None = None  # the parent run's name, once it is open
        self.run_tags = dict(run_tags or {})  # extra parent tags (e.g. the Prefect flow run id and URL)
        self.overrides = list(overrides)  # the --set overrides, shown in the run description
        self.origin = origin or notes.Origin()  # the Prefect flow run, the search: linked from the description
        self.uri = ""
        self.client: Any = None
        self.config: PipelineConfig | None = None
        self.data: LoadedData | None = None
        self.run_id: str | None = None
        self.ended = False  # the parent run reached FINISHED or FAILED
        self.experiment_id: str | None = None
        self.children: dict[str, str] = {}  # child name -> run id, while open
        self.lightning_logged: set[str] = set()  # children whose epoch metrics Lightning logged
        self._previous_uri: tuple[str | None] | None = None  # MLflow's global URI before the run, while swapped
        self._chosen: tuple[str, Any] | None = None  # (name, model info) of the logged model to register
        self._models: tuple[Any, Any, dict[str, Any]] | None = None  # (encoder, finetuned, name -> model info)

    # -- runs -------------------------------------------------------------------------------------------

    def on_run_start(self, config: PipelineConfig, data: LoadedData) -> None:
        """Open the parent run; log params, versions, the data set and the resolved config (rank 0 only)."""
        if process_rank() != 0:  # under ddp every rank runs the pipeline; one records it
            return
        self.config, self.data = config, data
        self.uri = uris.resolve_tracking_uri(self.configured_uri or config.tracking_uri)
        self.client = store.client(self.uri)
        if self._previous_uri is None:
            # MLFlowLogger and MLflow's model logging use the process-global URI; the caller's comes back at the end.
            self._previous_uri = (store.swap_tracking_uri(self.uri),)
        commit = git_commit()
        if self.run_id is None or self.ended:  # a retried call (flows retry I/O) reuses the open run
            name = self.experiment or config.name
            self.experiment_id = store.experiment_id(self.client, self.uri, name, {
                EXPERIMENT_KIND: MODEL_TRAINING, MLFLOW_RUN_NOTE: notes.experiment_note(name)})
            close_stale_runs(self.client, self.experiment_id)
            self.run_name = self.requested_name or describe.run_name(config.name)
            note = notes.parent_start(config, str(data.source), self.overrides, self.origin)
            tags = {"sae.data.source": str(data.source), "sae.data.hash": str(data.fingerprint)[:store.DIGEST_CHARS],
                    "sae.overrides": notes.overrides_tag(self.overrides), MLFLOW_RUN_NOTE: note}
            tags |= process_tags()
            tags |= ({"mlflow.source.git.commit": commit} if commit else {}) | self.run_tags
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=resolve_tags(tags))
            self.run_id, self.ended, self.children, self.lightning_logged = run.info.run_id, False, {}, set()
        params = describe.run_params(config) | {f"data.rows.{k}": v for k, v in data.counts().items()}
        params |= {f"version.{k}": v for k, v in package_versions().items()}
        self._log_params(self.run_id, params | ({"git_commit": commit} if commit else {}))
        self.client.log_inputs(self.run_id, datasets=dataset_inputs(data))
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")
        log.info("MLflow run %s in experiment %s at %s", self.run_id, self.experiment_id, self.uri)

    def on_run_end(self, result: PretrainResult) -> None:
        """Parent metrics, artifacts and models (``on_register`` registers and closes the run)."""
        if self.run_id is None or self.config is None or self.ended:
            return
        logged = self._models
        if logged is None or logged[0] is not result.encoder or logged[1] is not result.finetuned:
            self.on_encoders(result.data, result.encoder, result.finetuned)  # called without on_encoders first
        assert self._models is not None
        infos = self._models[2]
        chosen = "encoder-finetuned" if result.encoder_choice[0] == "finetuned" and "encoder-finetuned" in infos \
            else "encoder"  # register.encoder, decided on validation accuracy
        points = describe.summary_points(describe.parent_summary(result))
        # Logging a model links the run's metrics to it (the run page's Models column, the model's metrics);
        # the models were logged first, while the probes ran, so the summary is linked to them here.
        self._log_batch(self.run_id, points + [Metric(p.key, p.value, p.timestamp, p.step, model_id=info.model_id)
                                               for info in infos.values() for p in points],
                        tags=[RunTag("sae.encoder", chosen)])  # why: the version's description
        with tempfile.TemporaryDirectory(prefix="sae-artifacts-") as tmp:
            self.client.log_artifacts(self.run_id, str(run_files.write_artifacts(result, Path(tmp))))
        result.tracked = TrackedRun(self.run_id, str(self.experiment_id), self.uri, run_url=self.run_url(),
                                    model_uri=infos[chosen].model_uri,
                                    logged_models={k: v.model_uri for k, v in infos.items()})
        self._chosen = (chosen, infos[chosen])

    def on_encoders(self, data: LoadedData, encoder: StackedEncoder, finetuned: FinetuneResult | None) -> None:
        """Log the stacked encoder (and the fine-tuned one) as pyfunc models of the parent run."""
        if self.run_id is None or self.ended:
            return
        example = data.X_train[:5]

        def tags(kind: str, stack: StackedEncoder) -> dict[str, str]:
            return {"kind": kind, MLFLOW_RUN_NOTE: notes.logged_model_note(kind, stack.d_in, stack.d_out,
                                                                           feature_names(stack))}

        infos = {"encoder": log_encoder_model(encoder, run_id=self.run_id, tracking_uri=self.uri,
                                              input_example=example, tags=tags("pretrained", encoder))}
        if finetuned is not None:
            with serving_check.skipped():  # same code, signature and example as the encoder checked just above
                infos["encoder-finetuned"] = log_encoder_model(
                    finetuned.encoder, run_id=self.run_id, tracking_uri=self.uri, name="encoder-finetuned",
                    input_example=example, tags=tags("finetuned", finetuned.encoder))
        self._models = (encoder, finetuned, infos)

    def on_register(self, result: PretrainResult) -> None:
        """Register the logged encoder (unless ``register=False``); close the parent FINISHED."""
        if self.run_id is None or self.config is None or self.ended or self._chosen is None:
            return
        (chosen, info), tracked = self._chosen, result.tracked
        assert tracked is not None, "on_run_end fills result.tracked"
        if self.register:
            name, value, greater = result.headline()
            stack, problem = result.registered_encoder, degenerate(result)  # a degenerate run never takes the alias
            reg = registry.register_model(
                self.client, name=self.config.model_name, source=info.model_uri, run_id=self.run_id,
                headline=registry.Headline(name, float(value), greater), alias=self.config.register.alias,
                model_id=info.model_id, extra_tags={"kind": chosen},
                weights_sha256=versions.weights_digest(stack), run_name=self.run_name, run_url=self.run_url(),
                details=notes.version_details(result, self.overrides, self.origin), ineligible=problem)
            tracked.registration, tracked.model_uri = reg, reg.model_uri
        note = notes.parent_end(result, self.overrides, tracked.registration, self.origin)
        self.client.log_batch(self.run_id, tags=[RunTag(MLFLOW_RUN_NOTE, note), RunTag(
            "sae.registry", notes.registration_tag(tracked.registration))])
        self.client.set_terminated(self.run_id, FINISHED)
        self.ended = True
        self._restore_uri()

    def on_run_failed(self, error: BaseException) -> None:
        """Mark open child runs and the parent FAILED (KILLED after Ctrl-C) with the error as a tag and ``error.txt``."""
        try:
            if self.run_id is None or self.ended:
                return
            status, message, interrupted = describe.failure(error)
            tags = [RunTag("error", message)]
            for name, run_id in list(self.children.items()):
                self.client.log_batch(run_id, tags=tags)
                self._end(name, status)
            tags.append(RunTag("sae.interrupted", str(interrupted).lower()))
            if self.config is not None and self.data is not None:
                note = notes.parent_failed(self.config, str(self.data.source), self.overrides, self.origin, error)
                tags.append(RunTag(MLFLOW_RUN_NOTE, note))
            self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, status)  # before the artifact: that needs a writable store
            self.ended = True
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self.client.log_text(self.run_id, trace, "error.txt")
        except Exception as problem:  # noqa: BLE001 - never hide the pipeline's own error behind ours
            log.warning("could not record the failure in MLflow: %s", problem)
        finally:
            self._restore_uri()

    def _restore_uri(self) -> None:
        if self._previous_uri is not None:
            store.swap_tracking_uri(self._previous_uri[0])
            self._previous_uri = None

    def run_url(self, ui_url: str | None = None) -> str | None:
        """The parent run's page: on the http(s) tracking server, else on ``ui_url`` (e.g. ``mlflow ui``'s address)."""
        base = self.uri if uris.is_server(self.uri) else ui_url
        if base is None or self.run_id is None:
            return None
        return f"{base.rstrip('/')}/{uris.run_page(str(self.experiment_id), self.run_id)}"

    # -- layers and fine-tuning -------------------------------------------------------------------------

    def layer_logger(self, index: int, settings: Any) -> BufferedMLFlowLogger | None:
        """Open child run ``layer-<index+1>`` and hand Lightning a logger bound to it."""
        if self.run_id is None:
            return None
        from pipeline.tracking.epoch_logger import BufferedMLFlowLogger  # Lightning: only when a layer trains
        name = f"layer-{index + 1}"
        self.lightning_logged.add(name)
        return BufferedMLFlowLogger(self._child(name, settings), self.uri)

    def on_layer_end(self, result: LayerResult) -> None:
        """Layer params (when cached), test summary, weights, history and plots; close the child run FINISHED."""
        if self.run_id is None:
            return
        name = f"layer-{result.index + 1}"
        run_id = self._child(name, result.settings)
        series = [] if name in self.lightning_logged else describe.epoch_points(result.history)  # cached: replay
        self._log_batch(run_id, series, tags=[
            RunTag("sae.reused", str(result.reused).lower()), RunTag(MLFLOW_RUN_NOTE, notes.layer_note(result)),
            RunTag(run_files.LOGGED_IMAGES_TAG, "true")])
        with tempfile.TemporaryDirectory(prefix="sae-layer-") as tmp:  # one upload: weights, history, plots, chart
            self.client.log_artifacts(run_id, str(run_files.write_layer_files(result, Path(tmp))))
        self._end(name, FINISHED)

    def finetune_logger(self) -> BufferedMLFlowLogger | None:
        """Open child run ``finetune`` and hand Lightning a logger bound to it."""
        if self.run_id is None or self.config is None:
            return None
        from pipeline.tracking.epoch_logger import BufferedMLFlowLogger
        self.lightning_logged.add("finetune")
        return BufferedMLFlowLogger(self._child("finetune", self.config.finetune), self.uri, describe.FINETUNE_CHARTS)

    def on_finetune_end(self, result: FinetuneResult) -> None:
        """Accuracies before and after; close the child run FINISHED."""
        if self.run_id is None or self.config is None:
            return
        run_id = self._child("finetune", self.config.finetune)
        series = [] if "finetune" in self.lightning_logged else \
            describe.epoch_points(result.logged_history or result.history, charts=describe.FINETUNE_CHARTS)  # cached
        note = notes.finetune_note(result, self.config.finetune.epochs)
        self._log_batch(run_id, series + describe.finetune_points(result), tags=[
            RunTag("sae.reused", str(result.reused).lower()), RunTag(MLFLOW_RUN_NOTE, note)])
        self._end("finetune", FINISHED)

    # -- helpers ----------------------------------------------------------------------------------------

    def _child(self, name: str, settings: Any) -> str:
        """The open child run ``name``, created on first use (fine-tuning's with its ``settings`` as params)."""
        if name in self.children:
            return self.children[name]
        assert self.run_id is not None
        tags = {MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: name}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=resolve_tags(tags))
        self.children[name] = run.info.run_id
        # A layer run's settings are the parent's layers.N.* params and its description: with params of its own,
        # MLflow 3.17 labels its loss image chart with all of them, covering the chart.
        if settings is not None and not name.startswith("layer-"):
            self._log_params(run.info.run_id, describe.layer_params(settings))
        return run.info.run_id

    def _end(self, name: str, status: str) -> None:
        run_id = self.children.pop(name, None)
        if run_id is not None:
            self.client.set_terminated(run_id, status)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[start : start + BATCH])

    def _log_batch(self, run_id: str, metrics: list[Metric], params: Sequence[Param] = (),
                   tags: Sequence[RunTag] = ()) -> None:
        """Metrics in chunks of MLflow's 1000-per-call limit; params and tags ride with the first."""
        for start in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params, tags=tags)
            params, tags = [], []
