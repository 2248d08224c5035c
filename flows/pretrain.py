"""The pretraining flow: load data, one task per layer, finish (stack, fine-tune, evaluate, register).

Layers are cached in ``pipeline.run.layer_store`` under ``<cache_dir>/layers/<key>`` (weights as safetensors,
codes as .npy, sha256 checksums written last), keyed by ``layer_cache_key`` (data, the layer's resolved
settings, its seed, the key below). The flow decides reuse from that store alone: a sound entry is reused,
a missing or damaged one is retrained together with every layer above it. Prefect persists no task result
and keeps no cache record (its result records name their own serializer, pickle included, so a planted one
would run code). So a re-run reuses every unchanged layer, a changed layer retrains it and everything above,
and a killed run resumes at the layer it was killed in. Fine-tuning is cached the same way under
``<cache_dir>/finetune/<key>`` (``pipeline.run.finetune_store``: the stack, the labels, its settings). Tasks
run in the flow's process, one after another (no process pool: torch workers cost more to spawn than these
layers take to train). Each task names the
one it waits on (``wait_for``), so the Prefect UI draws the chain: layer k after layer k-1, each layer's
record after its training.
"""

# No `from __future__ import annotations` here: deployments load this file by path and Prefect builds the
# parameter model from the annotations, which must then be real classes rather than strings.
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import State
from prefect.utilities.annotations import quote

from flows.artifacts import current_flow_run_tags, current_origin, publish_results, publish_run_link
from flows.session import FlowSession, current_session
from pipeline.app.progress import ProgressPrinter
from pipeline.config import PipelineConfig, ResolvedLayer
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.run import finetune_store, greedy, layer_store
from pipeline.run.finetune import FinetuneResult
from pipeline.run.greedy import Steps, pretrain_stack
from pipeline.run.hooks import CompositeHooks, PipelineHooks
from pipeline.run.results import LayerResult, PretrainResult
from pipeline.tracking import describe
from pipeline.tracking.runs import MlflowTracking
from sae.stack import StackedEncoder


def _as_config(config: PipelineConfig | dict[str, Any]) -> PipelineConfig:
    return config if isinstance(config, PipelineConfig) else PipelineConfig.from_dict(dict(config))


def run_name() -> str:
    """Flow run name ``<config name>-<time>``; the MLflow parent run gets the same name (see pretrain_flow)."""
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, PipelineConfig) else dict(config or {}).get("name", "sae")
    return describe.run_name(name)


def transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures, not bad input: an InputError (or other ValueError) does not fix itself."""
    return not isinstance(state.data, ValueError)


IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": transient,
                              "cache_policy": NO_CACHE, "persist_result": False}


@task(name="load-data", task_run_name="load-data", **IO_RETRIES)
def load_data_task(config: PipelineConfig, preloaded: LoadedData | None = None) -> LoadedData:
    """Read, validate, split and scale the data (retried: it is file I/O), unless the CLI already did."""
    return preloaded or load_data(config.data, config.seed)


@task(name="start-tracking", task_run_name="start-tracking", **IO_RETRIES)
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
    fit_rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """Train layer ``settings.index`` into ``<cache_dir>/layers/<key>`` unless ``reuse``; never retried."""
    if reuse:
        return {"key": key, "trained": False}
    directory = layer_store.layer_dir(cache_dir, key)
    train = greedy.layer_trainer(settings, inputs, seed=seed, hooks=hooks, fit_rows=fit_rows)
    layer_store.train_into(directory, train, seed=seed, key=key, parent_key=parent_key, replace=True)
    return {"key": key, "trained": True}


@task(name="record-layer", **IO_RETRIES)
def record_layer_task(hooks: PipelineHooks, layer: LayerResult) -> None:
    """Log the layer to its MLflow child run (retried: network I/O)."""
    hooks.on_layer_end(layer)


ONCE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}  # not retried: trains or registers


@task(name="stack", task_run_name="stack", **ONCE)
def stack_task(config: PipelineConfig, data: LoadedData, layers: list[LayerResult]) -> StackedEncoder:
    """Stack the trained layers behind the data's scaling."""
    return greedy.stack_encoder(config, data, layers)


@task(name="finetune", task_run_name="finetune", **ONCE)
def finetune_task(config: PipelineConfig, data: LoadedData, layers: list[LayerResult], encoder: StackedEncoder,
                  hooks: PipelineHooks, top_key: str, refresh_cache: bool) -> FinetuneResult | None:
    """Fine-tune the stack with a softmax head (None when the data has no labels or finetune.epochs is 0),
    reusing the fine-tuning cache's entry for this stack, data and settings (``pipeline.run.finetune_store``)."""
    return finetune_store.finetune_cached(config, data, encoder, hooks, layers[-1].codes, top_key=top_key,
                                          refresh=refresh_cache, logger=get_run_logger())


@task(name="evaluate", task_run_name="evaluate", **ONCE)
def evaluate_task(config: PipelineConfig, data: LoadedData, layers: list[LayerResult], encoder: StackedEncoder,
                  finetuned: FinetuneResult | None, hooks: PipelineHooks, started: float,
                  raw_probe: Future[float] | None) -> PretrainResult:
    """Probe every layer's codes, assemble the result, log it and its models to MLflow."""
    return greedy.evaluate_run(config, data, layers, encoder, finetuned, hooks=hooks, started=started,
                               raw_probe=raw_probe)


@task(name="register", task_run_name="register", **ONCE)
def register_task(hooks: PipelineHooks, result: PretrainResult) -> None:
    """Register the encoder (alias moved only when it beats the holder) and close the MLflow run."""
    hooks.on_register(result)


def _opaque(value: Any) -> Any:
    return value if isinstance(value, LoadedData) else quote(value)


class Chain:
    """Runs tasks in the flow's process and records their states, so that each can name what it waits on."""

    def __init__(self) -> None:
        self.states: dict[str, State] = {}

    def after(self, *names: str) -> list[State]:
        """The states of the named earlier task runs (those that ran), for ``wait_for``."""
        return [self.states[n] for n in names if n in self.states]

    def run(self, task: Any, name: str, *args: Any, after: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """Run ``task`` as task run ``name`` after ``after``; return its result (raising its error).

        Arguments other than the loaded data go in ``quote``d: Prefect otherwise walks every list, dict,
        dataclass and model in them (the layers' histories, the config) looking for other tasks' results, and
        these hold none but the data; the order is ``wait_for``'s. The data stays visible, so the flow's graph
        still shows which tasks use load-data's result.
        """
        args = tuple(_opaque(a) for a in args)
        kwargs = {k: _opaque(v) for k, v in kwargs.items()}
        state = task.with_options(task_run_name=name)(*args, wait_for=self.after(*after), return_state=True, **kwargs)
        self.states[name] = state
        return state.result()


class CachedLayers:
    """The flow's layer step: a task per layer, reusing sound layer-store entries (see the module docstring)."""

    def __init__(self, config: PipelineConfig, hooks: PipelineHooks, refresh_cache: bool, chain: Chain) -> None:
        self.chain = chain
        self.cache_dir = Path(config.cache_dir).expanduser().resolve()
        self.hooks, self.refresh_cache = hooks, refresh_cache
        self.fingerprint: str | None = None
        self.parent_key: str | None = None
        self.retrain = refresh_cache  # once a layer retrains, every layer above it does too

    def __call__(self, settings: ResolvedLayer, inputs: Splits, seed: int, fit_rows: np.ndarray | None) -> LayerResult:
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
        layer = self._run(key, settings, inputs, seed, fit_rows, reused) if reused else None
        if layer is None:
            reused, self.retrain = False, True
            layer = self._run(key, settings, inputs, seed, fit_rows, False)
        if reused:
            logger.info("layer %d reused from cache %s (%s)", number, key, directory)
        else:
            logger.info("layer %d trained and stored as %s", number, key)
        self.parent_key = key
        return layer

    def _run(self, key: str, settings: ResolvedLayer, inputs: Splits, seed: int, fit_rows: np.ndarray | None,
             reuse: bool) -> LayerResult | None:
        """The task, then the stored layer; None when a reused entry cannot be loaded after all."""
        number = settings.index + 1
        self.chain.run(train_layer_task, f"train-layer-{number}", key, settings, inputs, seed=seed, fit_rows=fit_rows,
                       cache_dir=str(self.cache_dir), parent_key=self.parent_key, hooks=self.hooks, reuse=reuse,
                       after=(f"train-layer-{number - 1}" if number > 1 else "start-tracking",))
        directory = layer_store.layer_dir(self.cache_dir, key)
        try:
            return layer_store.load_layer(directory, settings, reused=reuse)
        except Exception as error:  # noqa: BLE001 - checksums passed, yet the files do not load: retrain
            if not reuse:
                raise
            get_run_logger().warning("layer %d cache entry %s does not load (%s: %s): retraining",
                                     settings.index + 1, directory, type(error).__name__, error)
            return None


def flow_steps(config: PipelineConfig, tracking: MlflowTracking, hooks: PipelineHooks, refresh_cache: bool,
               session: FlowSession) -> Steps:
    """The pipeline's steps as Prefect tasks (layers cached), chained; the loop itself is pipeline.run.greedy's.
    ``session`` brings the data and the raw probe when the caller already has them."""
    chain = Chain()
    layers = CachedLayers(config, hooks, refresh_cache, chain)
    last = f"train-layer-{len(config.layers)}"

    def start(config: PipelineConfig, data: LoadedData) -> None:
        chain.run(start_tracking_task, "start-tracking", hooks, config, data, after=("load-data",))
        layers.fingerprint = layer_store.input_fingerprint(data)
        if tracking.run_id is not None:
            publish_run_link(config.name, tracking.uri, str(tracking.experiment_id), tracking.run_id,
                             tracking.run_name or "")

    def record(layer: LayerResult) -> None:
        name = f"record-layer-{layer.index + 1}"
        chain.run(record_layer_task, name, hooks, layer,
                  after=(f"train-layer-{layer.index + 1}",))

    return Steps(
        load=lambda config: chain.run(load_data_task, "load-data", config, session.data_of(config)),
        start=start,
        layer=layers,
        record=record,
        stack=lambda config, data, done: chain.run(stack_task, "stack", config, data, done,
                                                   after=(last, f"record-layer-{len(config.layers)}")),
        finetune=lambda config, data, done, encoder: chain.run(finetune_task, "finetune", config, data, done,
                                                               encoder, hooks, layers.parent_key, refresh_cache,
                                                               after=("stack",)),
        evaluate=lambda config, data, done, encoder, finetuned, started: chain.run(
            evaluate_task, "evaluate", config, data, done, encoder, finetuned, hooks, started,
            session.raw_probe_of(config), after=("finetune",)),
        register=lambda result: chain.run(register_task, "register", hooks, result, after=("evaluate",)),
    )


@flow(name="sae-pretrain", flow_run_name=run_name, persist_result=False, validate_parameters=True)
def pretrain_flow(config: PipelineConfig, refresh_cache: bool = False, overrides: list[str] | None = None
                  ) -> PretrainResult:
    """Greedily pretrain, stack, fine-tune, evaluate, track and register the stack described by ``config``
    (``overrides``: the ``--set`` values already applied to it, shown in the MLflow run description)."""
    config = _as_config(config)
    session = current_session()  # what the caller's process already has (data, raw probe, its own hooks)
    # One name for both: the MLflow parent run is named after this flow run, tagged with its id, linked to its page.
    name = flow_run.get_name()
    tracking = MlflowTracking(run_name=name, run_tags=current_flow_run_tags(), overrides=overrides or (),
                              origin=current_origin(name, session.search))
    hooks = CompositeHooks([tracking, ProgressPrinter(), *session.hooks])
    result = pretrain_stack(config, hooks, flow_steps(config, tracking, hooks, refresh_cache, session))
    publish_results(result)
    return result
