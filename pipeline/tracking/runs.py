"""MLflow tracking as pipeline hooks: a parent run per pipeline run, a child run per layer and for fine-tuning.

Only explicit run ids and an ``MlflowClient`` bound to the resolved tracking URI are used, so the hooks work
from any thread. Lightning logs epoch metrics into each child run through ``MLFlowLogger(run_id=...)``.
On success the pretrained stack is logged as pyfunc model ``encoder`` and, when fine-tuning ran, the
fine-tuned stack as ``encoder-finetuned``; the one ``register.encoder`` picks (by validation accuracy) is
registered with the reason (see ``pipeline.tracking.registry``). A failure marks the open runs FAILED and registers nothing.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only
from safetensors.torch import save_file

from pipeline.hooks import PipelineHooks
from pipeline.results import TrackedRun
from pipeline.tables import markdown_table
from pipeline.tracking import registry, store
from pipeline.tracking.pyfunc import log_encoder_model
from pipeline.tracking.store import dataset_inputs, git_commit, package_versions

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.finetune import FinetuneResult
    from pipeline.greedy import LayerResult
    from pipeline.results import PretrainResult
    from sae import SparseAutoencoder

log = logging.getLogger(__name__)
FAILED, FINISHED = RunStatus.to_string(RunStatus.FAILED), RunStatus.to_string(RunStatus.FINISHED)
BATCH = 100  # params per log_batch call (MLflow's limit); metrics allow 1000
FLUSH_SECONDS = 2.0  # how stale the live epoch metrics in the MLflow UI may get


class MlflowTracking(PipelineHooks):
    """Records a pipeline run in MLflow (on rank 0) and registers its encoder; ``register=False`` only logs."""

    # Every hook is a no-op while no parent run is open: before on_run_start, and on ranks other than 0.

    def __init__(self, tracking_uri: str | None = None, *, register: bool = True, experiment: str | None = None) -> None:
        self.configured_uri = tracking_uri
        self.register = register
        self.experiment = experiment
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

    # -- runs -------------------------------------------------------------------------------------------

    def on_run_start(self, config: PipelineConfig, data: LoadedData) -> None:
        """Open the parent run; log params, versions, the data set and the resolved config (rank 0 only)."""
        if rank_zero_only.rank != 0:  # under ddp every rank runs the pipeline; one records it
            return
        self.config, self.data = config, data
        self.uri = store.resolve_tracking_uri(self.configured_uri or config.tracking_uri)
        self.client = store.client(self.uri)
        if self._previous_uri is None:
            # MLFlowLogger and MLflow's model logging use the process-global URI; the caller's comes back at the end.
            self._previous_uri = (store.swap_tracking_uri(self.uri),)
        commit = git_commit()
        if self.run_id is None or self.ended:  # a retried call (flows retry I/O) reuses the open run
            self.experiment_id = store.experiment_id(self.client, self.uri, self.experiment or config.name)
            tags = {"sae.data.source": str(data.source), "sae.data.fingerprint": str(data.fingerprint)}
            tags |= {"mlflow.source.git.commit": commit} if commit else {}
            run = self.client.create_run(self.experiment_id, run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                         tags=resolve_tags(tags))
            self.run_id, self.ended, self.children, self.lightning_logged = run.info.run_id, False, {}, set()
        params = {**config.flat_params(), **{f"version.{k}": v for k, v in package_versions().items()}}
        self._log_params(self.run_id, params | ({"git_commit": commit} if commit else {}))
        self.client.log_inputs(self.run_id, datasets=dataset_inputs(data))
        self.client.log_text(self.run_id, config.to_yaml(), "config.yaml")
        log.info("MLflow run %s in experiment %s at %s", self.run_id, self.experiment_id, self.uri)

    def on_run_end(self, result: PretrainResult) -> None:
        """Parent metrics, artifacts and models; register; close the parent FINISHED."""
        if self.run_id is None or self.config is None or self.ended:
            return
        metrics = result.metrics()
        self._log_batch(self.run_id, _metrics([metrics]))
        with tempfile.TemporaryDirectory(prefix="sae-artifacts-") as tmp:
            self.client.log_artifacts(self.run_id, str(write_artifacts(result, Path(tmp))))
        example = result.data.X_train[:5]
        infos = {"encoder": log_encoder_model(result.encoder, run_id=self.run_id, tracking_uri=self.uri,
                                              input_example=example, tags={"kind": "pretrained"})}
        if result.finetuned is not None:
            infos["encoder-finetuned"] = log_encoder_model(
                result.finetuned.encoder, run_id=self.run_id, tracking_uri=self.uri, name="encoder-finetuned",
                input_example=example, tags={"kind": "finetuned"})
        kind, why = result.encoder_choice  # register.encoder, decided on validation accuracy
        chosen = "encoder-finetuned" if kind == "finetuned" and "encoder-finetuned" in infos else "encoder"
        self.client.set_tag(self.run_id, "sae.registered_encoder", f"{chosen}: {why}")
        tracked = TrackedRun(self.run_id, str(self.experiment_id), self.uri, run_url=self.run_url(),
                             model_uri=infos[chosen].model_uri,
                             logged_models={k: v.model_uri for k, v in infos.items()})
        if self.register:
            name, value, greater = result.headline()
            reg = registry.register_model(
                self.client, name=self.config.model_name, source=infos[chosen].model_uri, run_id=self.run_id,
                headline=registry.Headline(name, float(value), greater), metrics=metrics,
                alias=self.config.register.alias, model_id=infos[chosen].model_id,
                extra_tags={"kind": chosen, "encoder_choice": why})
            tracked.registration, tracked.model_uri = reg, reg.model_uri
            self.client.set_tag(self.run_id, "sae.registration", f"version {reg.model_version} @{reg.alias}: {reg.reason}")
        result.tracked = tracked
        self.client.set_terminated(self.run_id, FINISHED)
        self.ended = True
        self._restore_uri()

    def on_run_failed(self, error: BaseException) -> None:
        """Mark open child runs and the parent FAILED with the error as a tag and ``error.txt``."""
        try:
            if self.run_id is None or self.ended:
                return
            tags = [RunTag("error", f"{type(error).__name__}: {error}"[:5000])]
            for name, run_id in list(self.children.items()):
                self.client.log_batch(run_id, tags=tags)
                self._end(name, FAILED)
            interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
            self.client.log_batch(self.run_id, tags=[*tags, RunTag("sae.interrupted", str(interrupted).lower())])
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            self.client.log_text(self.run_id, trace, "error.txt")
            self.client.set_terminated(self.run_id, FAILED)
            self.ended = True
        except Exception as problem:  # noqa: BLE001 - never hide the pipeline's own error behind ours
            log.warning("could not record the failure in MLflow: %s", problem)
        finally:
            self._restore_uri()

    def _restore_uri(self) -> None:
        if self._previous_uri is not None:
            store.swap_tracking_uri(self._previous_uri[0])
            self._previous_uri = None

    def run_url(self) -> str | None:
        """The parent run's page when tracking goes to an http(s) server."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    # -- layers and fine-tuning -------------------------------------------------------------------------

    def layer_logger(self, index: int, settings: Any) -> BufferedMLFlowLogger | None:
        """Open child run ``layer-<index+1>`` and hand Lightning a logger bound to it."""
        if self.run_id is None:
            return None
        name = f"layer-{index + 1}"
        self.lightning_logged.add(name)
        return BufferedMLFlowLogger(self._child(name, settings), self.uri)

    def on_layer_end(self, result: LayerResult) -> None:
        """Layer params (when cached), test metrics, its weights; close the child run FINISHED."""
        if self.run_id is None:
            return
        name = f"layer-{result.index + 1}"
        run_id = self._child(name, result.settings)
        history = [] if name in self.lightning_logged else result.history  # cached: replay its history
        end = {"epoch": len(result.history), "seconds": result.seconds}
        end |= {f"test_{k}": v for k, v in result.test_metrics.items()}
        self._log_batch(run_id, _metrics([*history, end]), [Param("d_in", str(result.model.config.d_in))],
                        [RunTag("sae.reused", str(result.reused).lower())])
        with tempfile.TemporaryDirectory(prefix="sae-layer-") as tmp:
            path = write_layer_weights(result.model, Path(tmp) / f"{name}.safetensors")
            self.client.log_artifact(run_id, str(path), "weights")
        self._end(name, FINISHED)

    def finetune_logger(self) -> BufferedMLFlowLogger | None:
        """Open child run ``finetune`` and hand Lightning a logger bound to it."""
        if self.run_id is None or self.config is None:
            return None
        self.lightning_logged.add("finetune")
        return BufferedMLFlowLogger(self._child("finetune", self.config.finetune), self.uri)

    def on_finetune_end(self, result: FinetuneResult) -> None:
        """Accuracies before and after; close the child run FINISHED."""
        if self.run_id is None or self.config is None:
            return
        run_id = self._child("finetune", self.config.finetune)
        history = [] if "finetune" in self.lightning_logged else result.history
        end = {"epoch": len(result.history), "val_accuracy_before": result.val_accuracy_before,
               "val_accuracy_after": result.val_accuracy_after, "test_accuracy_before": result.test_accuracy_before,
               "test_accuracy_after": result.test_accuracy_after, "seconds": result.seconds,
               "best_epoch": -1 if result.best_epoch is None else result.best_epoch}
        self._log_batch(run_id, _metrics([*history, end]))
        self._end("finetune", FINISHED)

    # -- helpers ----------------------------------------------------------------------------------------

    def _child(self, name: str, settings: Any) -> str:
        """The open child run ``name``, created (with ``settings`` as params) on first use."""
        if name in self.children:
            return self.children[name]
        assert self.run_id is not None
        tags = {MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: name}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=resolve_tags(tags))
        self.children[name] = run.info.run_id
        if settings is not None:
            self._log_params(run.info.run_id, _flat(settings.model_dump(mode="json")))
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


def _metrics(rows: list[dict[str, float]]) -> list[Metric]:
    """One metric point per key of each row, at step ``row["epoch"]`` (default: the row's position)."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, int(row.get("epoch", i))) for i, row in enumerate(rows)
            for k, v in row.items() if k != "epoch"]


class BufferedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger bound to a run, writing its epoch metrics at most every FLUSH_SECONDS."""

    # Each write is a database commit (~10-50 ms on sqlite here): per-epoch writes cost a 60-epoch digits
    # layer over a second. Buffered, every epoch still gets its own point; finalize (end of fit, and on
    # failure) writes the rest before the run is marked terminated.

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        super().__init__(run_id=run_id, tracking_uri=tracking_uri)
        self.pending: list[Metric] = []
        self.flushed_at = time.monotonic()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        # Points are indexed by epoch (Lightning adds it), not by optimizer step, which differs under DDP.
        step = int(metrics["epoch"]) if "epoch" in metrics else (step or 0)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if not isinstance(v, str)]
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write the buffered metric points."""
        for start in range(0, len(self.pending), 1000):
            self.experiment.log_batch(self.run_id, metrics=self.pending[start : start + 1000])
        self.pending, self.flushed_at = [], time.monotonic()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.flush()
        super().finalize(status)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out |= _flat(item, f"{prefix}{key}." if isinstance(item, dict) else f"{prefix}{key}")
    return out


def write_layer_weights(model: SparseAutoencoder, path: Path) -> Path:
    """The layer's encoder and decoder tensors as safetensors, with its SAEConfig as JSON metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"sae_config": json.dumps(model.config.to_dict())})
    return path


def write_artifacts(result: PretrainResult, directory: Path) -> Path:
    """The results table (text and markdown) and the plots (PNG) into ``directory``."""
    from pipeline.tracking import plots  # matplotlib is slow to import; only runs that log need it

    (directory / "results.txt").write_text(result.table() + "\n")
    (directory / "results.md").write_text(markdown_table(result.rows()) + "\n")
    figures, layers = directory / "plots", result.layers
    plots.filter_grid(layers[0].model.encoder.weight.detach().cpu().numpy(), figures / "filter_grid.png")
    plots.loss_curves([layer.history for layer in layers], figures / "loss_curves.png")
    measured = [layer for layer in layers if layer.model.rho_hat is not None]
    if measured:
        targets = [layer.settings.target if layer.settings.sparsity == "kl" else None for layer in measured]
        plots.rho_hat_histogram([layer.model.rho_hat.numpy() for layer in measured], targets,
                                figures / "rho_hat_histogram.png")
    return directory
