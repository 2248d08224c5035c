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

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import flow_run

from flows.artifacts import publish_artifacts
from pipeline import layer_store
from pipeline.config import PipelineConfig
from pipeline.data import LoadedData
from pipeline.hooks import CompositeHooks, PipelineHooks
from pipeline.progress import ProgressPrinter
from pipeline.results import PretrainResult
from pipeline.stacking import LayerResult, finish, prepare
from pipeline.tracking import MlflowTracking

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
def load_data_task(config: PipelineConfig) -> tuple[LoadedData, np.ndarray, np.ndarray]:
    """Read, validate, split and scale the data (retried: it is file I/O)."""
    return prepare(config)


@task(name="start-tracking", **IO_RETRIES)
def start_tracking_task(hooks: PipelineHooks, config: PipelineConfig, data: LoadedData) -> None:
    """Open the MLflow parent run (retried: network I/O)."""
    hooks.on_run_start(config, data)


def _layer_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return parameters["key"]


@task(name="train-layer", cache_key_fn=_layer_key, persist_result=True, result_serializer="json")
def train_layer_task(
    key: str,
    settings: Any,
    train_inputs: np.ndarray,
    test_inputs: np.ndarray,
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
    layer_store.train_into(directory, settings, train_inputs, test_inputs, seed=seed, hooks=hooks, key=key,
                           parent_key=parent_key)
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
    return finish(config, data, layers, hooks=hooks, started=started)


def _layer(
    config: PipelineConfig, settings: Any, inputs: tuple[np.ndarray, np.ndarray], fingerprint: str,
    parent_key: str | None, hooks: PipelineHooks, refresh_cache: bool,
) -> tuple[str, LayerResult]:
    """Run (or reuse) one layer task and load its result from the layer store."""
    logger = get_run_logger()
    cache_dir = Path(config.cache_dir).expanduser().resolve()
    seed = config.seed + settings.index
    key = layer_store.layer_cache_key(fingerprint, settings, seed, parent_key)
    directory = layer_store.layer_dir(cache_dir, key)
    complete = layer_store.is_complete(directory)
    number = settings.index + 1
    state = train_layer_task.with_options(
        task_run_name=f"train-layer-{number}",
        refresh_cache=refresh_cache or not complete,  # a cached key whose files are gone retrains
        result_storage=cache_dir / PREFECT_RESULTS,
    )(key, settings, *inputs, seed=seed, cache_dir=str(cache_dir), parent_key=parent_key, hooks=hooks,
      reuse_files=not refresh_cache, return_state=True)
    output = state.result()  # raises the layer's own error when it failed
    reused = state.name == "Cached" or not output["trained"]
    if reused:
        logger.info("layer %d reused from cache %s (%s)", number, key, directory)
    else:
        logger.info("layer %d trained and stored as %s", number, key)
    return key, layer_store.load_layer(directory, settings, reused=reused)


@flow(name="sae-pretrain", flow_run_name=run_name, persist_result=False, validate_parameters=True)
def pretrain_flow(config: PipelineConfig, refresh_cache: bool = False) -> PretrainResult:
    """Greedily pretrain, stack, fine-tune, evaluate, track and register the stack described by ``config``."""
    config = _as_config(config)
    hooks = CompositeHooks([MlflowTracking(), ProgressPrinter(), *_extra_hooks])
    started = time.perf_counter()
    try:
        data, train_inputs, test_inputs = load_data_task(config)
        start_tracking_task(hooks, config, data)
        fingerprint = layer_store.input_fingerprint(data)
        layers: list[LayerResult] = []
        key: str | None = None
        for settings in config.resolved_layers():
            key, layer = _layer(config, settings, (train_inputs, test_inputs), fingerprint, key, hooks, refresh_cache)
            record_layer_task(hooks, layer)
            layers.append(layer)
            train_inputs, test_inputs = layer.train_codes, layer.test_codes
        result = finish_task(config, data, layers, hooks, started)
    except BaseException as error:
        hooks.on_run_failed(error)
        raise
    publish_artifacts(result)
    return result
