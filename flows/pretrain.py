"""The pretraining flow: load data, one cached task per layer, finish (stack, fine-tune, evaluate, register).

Each layer task is keyed by ``pipeline.layer_store.layer_cache_key`` (data, the layer's resolved settings,
its seed, the key below) and persists a small JSON result under ``<cache_dir>/prefect``; the layer itself
(weights as safetensors, codes as .npy) lives in ``<cache_dir>/layers/<key>``. So a re-run reuses every
unchanged layer, a changed layer retrains it and everything above, and a killed run resumes at the layer
it was killed in. Tasks run in the flow's process, one after another (no process pool: torch workers
cost more to spawn than these layers take to train).
"""

# No `from __future__ import annotations` here: deployments load this file by path and Prefect builds the
# parameter model from the annotations, which must then be real classes rather than strings.
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from flows.artifacts import publish_artifacts
from pipeline import layer_store
from pipeline.config import PipelineConfig, ResolvedLayer
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.greedy import Steps, pretrain_stack, stack_and_evaluate
from pipeline.hooks import CompositeHooks, PipelineHooks
from pipeline.progress import ProgressPrinter
from pipeline.results import LayerResult, PretrainResult
from pipeline.tracking.runs import MlflowTracking

PREFECT_RESULTS = "prefect"  # sub-directory of cache_dir holding Prefect's result and cache records
_extra_hooks: list[PipelineHooks] = []


@contextmanager
def extra_hooks(*hooks: PipelineHooks) -> Iterator[None]:
    """Add hooks (progress, test probes) to flows run in this process inside the block."""
    _extra_hooks.extend(hooks)
    try:
        yield
    finally:
        for h in hooks:
            _extra_hooks.remove(h)


def _as_config(config: PipelineConfig | dict[str, Any]) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(dict(config))


def run_name() -> str:
    """Flow run name: ``<config name>-<data source>-<time>``."""
    config = flow_run.parameters.get("config")
    name, source = ("?", "?")
    if isinstance(config, PipelineConfig):
        name, source = config.name, config.data.source
    elif isinstance(config, dict):
        name, source = config.get("name", "?"), (config.get("data") or {}).get("source", "digits")
    return f"{name}-{Path(str(source)).name}-{time.strftime('%Y%m%d-%H%M%S')}"


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, not bad input: an InputError (or other ValueError) does not fix itself."""
    return not isinstance(state.data, ValueError)


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": transient,
                              "cache_policy": NO_CACHE, "persist_result": False}


@task(name="load-data", **IO_RETRIES)
def load_data_task(config: PipelineConfig) -> LoadedData:
    """Read, validate, split and scale the data (retried: it is file I/O)."""
    return load_data(config.data, config.seed)


@task(name="start-tracking", **IO_RETRIES)
def start_tracking_task(hooks: PipelineHooks, config: PipelineConfig, data: LoadedData) -> None:
    """Open the MLflow parent run (retried: network I/O)."""
    hooks.on_run_start(config, data)


def _layer_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return parameters["key"]


@task(name="train-layer", cache_key_fn=_layer_key, persist_result=True, result_serializer="json")
def train_layer_task(
    key: str,
    settings: ResolvedLayer,
    inputs: Splits,
    *,
    seed: int,
    cache_dir: str,
    parent_key: str | None,
    hooks: PipelineHooks,
    reuse_files: bool,
) -> dict[str, Any]:
    """Train layer ``settings.index`` into ``<cache_dir>/layers/<key>``; never retried (training is not I/O)."""
    directory = layer_store.layer_dir(cache_dir, key)
    if reuse_files and layer_store.is_complete(directory):  # trained, but killed before Prefect recorded it
        return {"key": key, "trained": False}
    layer_store.train_into(directory, settings, inputs, seed=seed, hooks=hooks, key=key, parent_key=parent_key)
    return {"key": key, "trained": True}


@task(name="record-layer", **IO_RETRIES)
def record_layer_task(hooks: PipelineHooks, layer: LayerResult) -> None:
    """Log the layer to its MLflow child run (retried: network I/O)."""
    hooks.on_layer_end(layer)


@task(name="finish", cache_policy=NO_CACHE, persist_result=False)
def finish_task(
    config: PipelineConfig, data: LoadedData, layers: list[LayerResult], hooks: PipelineHooks, started: float
) -> PretrainResult:
    """Stack, fine-tune, evaluate, log and register (not retried: it trains and registers a version)."""
    return stack_and_evaluate(config, data, layers, hooks=hooks, started=started)


class CachedLayers:
    """The flow's layer step: a cached task per layer, keyed on the data, its settings, seed and the key below."""

    def __init__(self, config: PipelineConfig, hooks: PipelineHooks, refresh_cache: bool) -> None:
        self.cache_dir = Path(config.cache_dir).expanduser().resolve()
        self.hooks, self.refresh_cache = hooks, refresh_cache
        self.fingerprint: str | None = None
        self.parent_key: str | None = None

    def __call__(self, settings: ResolvedLayer, inputs: Splits, seed: int) -> LayerResult:
        """Run (or reuse) one layer task and load its result from the layer store."""
        assert self.fingerprint is not None, "set the input fingerprint before the first layer"
        logger = get_run_logger()
        key = layer_store.layer_cache_key(self.fingerprint, settings, seed, self.parent_key)
        directory = layer_store.layer_dir(self.cache_dir, key)
        number = settings.index + 1
        state = train_layer_task.with_options(
            task_run_name=f"train-layer-{number}",
            refresh_cache=self.refresh_cache or not layer_store.is_complete(directory),  # files gone: retrain
            result_storage=self.cache_dir / PREFECT_RESULTS,
        )(key, settings, inputs, seed=seed, cache_dir=str(self.cache_dir), parent_key=self.parent_key,
          hooks=self.hooks, reuse_files=not self.refresh_cache, return_state=True)
        output = state.result()  # raises the layer's own error when it failed
        reused = state.name == "Cached" or not output["trained"]
        if reused:
            logger.info("layer %d reused from cache %s (%s)", number, key, directory)
        else:
            logger.info("layer %d trained and stored as %s", number, key)
        self.parent_key = key
        return layer_store.load_layer(directory, settings, reused=reused)


def flow_steps(config: PipelineConfig, hooks: PipelineHooks, refresh_cache: bool) -> Steps:
    """The pipeline's steps as Prefect tasks (layers cached); the loop itself is pipeline.greedy's."""
    layers = CachedLayers(config, hooks, refresh_cache)

    def start(config: PipelineConfig, data: LoadedData) -> None:
        start_tracking_task(hooks, config, data)
        layers.fingerprint = layer_store.input_fingerprint(data)

    return Steps(
        load=load_data_task,
        start=start,
        layer=layers,
        record=lambda layer: record_layer_task(hooks, layer),
        finish=lambda config, data, done, started: finish_task(config, data, done, hooks, started),
    )


@flow(name="sae-pretrain", flow_run_name=run_name, persist_result=False, validate_parameters=True)
def pretrain_flow(config: PipelineConfig, refresh_cache: bool = False, overrides: list[str] | None = None
                  ) -> PretrainResult:
    """Greedily pretrain, stack, fine-tune, evaluate, track and register the stack described by ``config``
    (``overrides``: the ``--set`` values already applied to it, shown in the MLflow run description)."""
    config = _as_config(config)
    hooks = CompositeHooks([MlflowTracking(overrides=overrides or ()), ProgressPrinter(), *_extra_hooks])
    result = pretrain_stack(config, hooks, flow_steps(config, hooks, refresh_cache))
    publish_artifacts(result)
    return result
