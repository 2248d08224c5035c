"""The pretraining flow: load data, one task per layer, finish (stack, fine-tune, evaluate, register).

Layers are cached in ``pipeline.layer_store`` under ``<cache_dir>/layers/<key>`` (weights as safetensors,
codes as .npy, sha256 checksums written last), keyed by ``layer_cache_key`` (data, the layer's resolved
settings, its seed, the key below). The flow decides reuse from that store alone: a sound entry is reused,
a missing or damaged one is retrained together with every layer above it. Prefect persists no task result
and keeps no cache record (its result records name their own serializer, pickle included, so a planted one
would run code). So a re-run reuses every unchanged layer, a changed layer retrains it and everything above,
and a killed run resumes at the layer it was killed in. Tasks run in the flow's process, one after another
(no process pool: torch workers cost more to spawn than these layers take to train).
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


_preloaded: dict[str, LoadedData] = {}


def _data_key(config: PipelineConfig) -> str:
    return f"{config.seed}:{config.data.model_dump_json()}"


@contextmanager
def preloaded(config: PipelineConfig, data: LoadedData) -> Iterator[None]:
    """Flows in the block use ``data`` (read and checked before the flow started) instead of reading again."""
    _preloaded[_data_key(config)] = data
    try:
        yield
    finally:
        _preloaded.pop(_data_key(config), None)


@task(name="load-data", **IO_RETRIES)
def load_data_task(config: PipelineConfig) -> LoadedData:
    """Read, validate, split and scale the data (retried: it is file I/O), unless the CLI already did."""
    return _preloaded.get(_data_key(config)) or load_data(config.data, config.seed)


@task(name="start-tracking", **IO_RETRIES)
def start_tracking_task(hooks: PipelineHooks, config: PipelineConfig, data: LoadedData) -> None:
    """Open the MLflow parent run (retried: network I/O)."""
    hooks.on_run_start(config, data)


@task(name="train-layer", cache_policy=NO_CACHE, persist_result=False)
def train_layer_task(
    key: str,
    settings: ResolvedLayer,
    inputs: Splits,
    *,
    seed: int,
    cache_dir: str,
    parent_key: str | None,
    hooks: PipelineHooks,
    reuse: bool,
) -> dict[str, Any]:
    """Train layer ``settings.index`` into ``<cache_dir>/layers/<key>`` unless ``reuse``; never retried."""
    if reuse:
        return {"key": key, "trained": False}
    directory = layer_store.layer_dir(cache_dir, key)
    layer_store.train_into(directory, settings, inputs, seed=seed, hooks=hooks, key=key, parent_key=parent_key,
                           replace=True)
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
    """The flow's layer step: a task per layer, reusing sound layer-store entries (see the module docstring)."""

    def __init__(self, config: PipelineConfig, hooks: PipelineHooks, refresh_cache: bool) -> None:
        self.cache_dir = Path(config.cache_dir).expanduser().resolve()
        self.hooks, self.refresh_cache = hooks, refresh_cache
        self.fingerprint: str | None = None
        self.parent_key: str | None = None
        self.retrain = refresh_cache  # once a layer retrains, every layer above it does too

    def __call__(self, settings: ResolvedLayer, inputs: Splits, seed: int) -> LayerResult:
        """Run one layer task (training unless reusing) and load its result from the layer store."""
        assert self.fingerprint is not None, "set the input fingerprint before the first layer"
        logger = get_run_logger()
        key = layer_store.layer_cache_key(self.fingerprint, settings, seed, self.parent_key)
        directory = layer_store.layer_dir(self.cache_dir, key)
        number = settings.index + 1
        problem = None if self.retrain else layer_store.check_entry(directory)
        if problem is not None and directory.exists():
            logger.warning("layer %d cache entry %s is damaged (%s): retraining layer %d and the layers above",
                           number, directory, problem, number)
        reused = not self.retrain and problem is None
        layer = self._run(key, settings, inputs, seed, reused) if reused else None
        if layer is None:
            reused, self.retrain = False, True
            layer = self._run(key, settings, inputs, seed, False)
        if reused:
            logger.info("layer %d reused from cache %s (%s)", number, key, directory)
        else:
            logger.info("layer %d trained and stored as %s", number, key)
        self.parent_key = key
        return layer

    def _run(self, key: str, settings: ResolvedLayer, inputs: Splits, seed: int, reuse: bool) -> LayerResult | None:
        """The task, then the stored layer; None when a reused entry cannot be loaded after all."""
        train_layer_task.with_options(task_run_name=f"train-layer-{settings.index + 1}")(
            key, settings, inputs, seed=seed, cache_dir=str(self.cache_dir), parent_key=self.parent_key,
            hooks=self.hooks, reuse=reuse)
        directory = layer_store.layer_dir(self.cache_dir, key)
        try:
            return layer_store.load_layer(directory, settings, reused=reuse)
        except Exception as error:  # noqa: BLE001 - checksums passed, yet the files do not load: retrain
            if not reuse:
                raise
            get_run_logger().warning("layer %d cache entry %s does not load (%s: %s): retraining",
                                     settings.index + 1, directory, type(error).__name__, error)
            return None


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
def pretrain_flow(config: PipelineConfig, refresh_cache: bool = False) -> PretrainResult:
    """Greedily pretrain, stack, fine-tune, evaluate, track and register the stack described by ``config``."""
    config = _as_config(config)
    hooks = CompositeHooks([MlflowTracking(), ProgressPrinter(), *_extra_hooks])
    result = pretrain_stack(config, hooks, flow_steps(config, hooks, refresh_cache))
    publish_artifacts(result)
    return result
