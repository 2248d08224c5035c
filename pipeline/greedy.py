"""Greedy layer-wise pretraining: layer k trains on the codes of layers 1..k-1; then stack, fine-tune, evaluate.

``pretrain_stack`` owns the one loop over layers. How a step runs is pluggable (``Steps``): plain function
calls here, cached Prefect tasks in ``flows.pretrain``; the order, the per-layer seed and the failure hook
are the same for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import PipelineConfig, ResolvedLayer
from pipeline.data.codes import encode_in_chunks
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.evaluate import layer_test_metrics, probe_accuracies
from pipeline.finetune import FinetuneResult, finetune_stack
from pipeline.hooks import PipelineHooks
from pipeline.results import LayerResult, PretrainResult
from sae import SAEConfig, SparseAutoencoder, train_autoencoder
from sae.stack import StackedEncoder

SPLITS = ("train", "val", "test")


def sae_config(settings: ResolvedLayer, d_in: int) -> SAEConfig:
    """The SAEConfig of a resolved layer fed ``d_in`` features."""
    return SAEConfig(d_in=d_in, d_hidden=settings.hidden, **settings.layer_fields())


def layer_seed(config: PipelineConfig, settings: ResolvedLayer) -> int:
    """The seed layer ``settings.index`` trains with (init, shuffling, noise)."""
    return config.seed + settings.index


def train_layer(
    settings: ResolvedLayer,
    inputs: Splits,
    *,
    seed: int,
    hooks: PipelineHooks | None = None,
    codes_dir: Path | None = None,
) -> LayerResult:
    """Train one layer on ``inputs.train`` (early stopping on ``inputs.val``) and encode every split."""
    hooks = hooks or PipelineHooks()
    start = time.perf_counter()
    model = train_autoencoder(
        inputs.train,
        sae_config(settings, int(inputs.train.shape[1])),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer=settings.optimizer,
        seed=seed,
        validation=inputs.val,
        logger=hooks.layer_logger(settings.index, settings),
        callbacks=hooks.layer_callbacks(settings.index, settings),
        patience=settings.early_stopping_patience,
        trainer_options=settings.trainer.model_dump(),
        compile=settings.compile,
    )
    return encode_layer(settings, model, inputs, codes_dir=codes_dir, seconds=time.perf_counter() - start)


def encode_layer(
    settings: ResolvedLayer,
    model: SparseAutoencoder,
    inputs: Splits,
    *,
    codes_dir: Path | None = None,
    seconds: float = 0.0,
    reused: bool = False,
) -> LayerResult:
    """One pass per split through a trained layer (its codes feed the next layer, the probes and the plots),
    plus its reconstruction and sparsity on the test split."""
    codes = Splits(*(
        encode_in_chunks(model.encode, x, settings.hidden,
                         out_path=None if codes_dir is None else codes_dir / f"{split}_codes.npy")
        for split, x in zip(SPLITS, inputs, strict=True)
    ))
    return LayerResult(settings, model, codes, layer_test_metrics(model, inputs.test, codes.test), seconds, reused)


def stack_and_evaluate(
    config: PipelineConfig,
    data: LoadedData,
    layers: list[LayerResult],
    *,
    hooks: PipelineHooks | None = None,
    started: float | None = None,
) -> PretrainResult:
    """Stack the trained layers, fine-tune when labelled, evaluate, and hand the result to the hooks."""
    hooks = hooks or PipelineHooks()
    started = time.perf_counter() if started is None else started
    encoder = StackedEncoder.from_autoencoders(
        data.scaling,
        [layer.model for layer in layers],
        meta={"name": config.name, "source": data.source, "fingerprint": data.fingerprint,
              "feature_names": list(data.feature_names)},
    )
    finetuned: FinetuneResult | None = None
    if data.y_train is not None and config.finetune.epochs > 0:
        finetuned = finetune_stack(
            encoder,
            data.X_train,
            data.y_train,
            data.X_test,
            data.y_test,
            epochs=config.finetune.epochs,
            lr=config.finetune.lr,
            batch_size=config.finetune.batch_size,
            weight_decay=config.finetune.weight_decay,
            softmax_iterations=config.finetune.softmax_iterations,
            seed=config.seed,
            logger=hooks.finetune_logger(),
        )
        hooks.on_finetune_end(finetuned)
    probes = (probe_accuracies(data, layers, seed=config.seed, accelerator=config.trainer.accelerator)
              if data.y_train is not None else {})
    result = PretrainResult(
        config=config,
        data=data,
        layers=layers,
        encoder=encoder,
        finetuned=finetuned,
        probes=probes,
        seconds=time.perf_counter() - started,
    )
    hooks.on_run_end(result)
    return result


LayerStep = Callable[[ResolvedLayer, Splits, int], LayerResult]


@dataclass
class Steps:
    """How each step of a run is carried out; the defaults are plain calls (``flows.pretrain`` wraps tasks)."""

    load: Callable[[PipelineConfig], LoadedData]
    start: Callable[[PipelineConfig, LoadedData], None]
    layer: LayerStep  # (settings, inputs, seed) -> the trained (or cached) layer
    record: Callable[[LayerResult], None]
    finish: Callable[[PipelineConfig, LoadedData, list[LayerResult], float], PretrainResult]


def plain_steps(hooks: PipelineHooks) -> Steps:
    """Every step as a direct function call, reporting to ``hooks``."""
    return Steps(
        load=lambda config: load_data(config.data, config.seed),
        start=hooks.on_run_start,
        layer=lambda settings, inputs, seed: train_layer(settings, inputs, seed=seed, hooks=hooks),
        record=hooks.on_layer_end,
        finish=lambda config, data, layers, started: stack_and_evaluate(config, data, layers, hooks=hooks,
                                                                          started=started),
    )


def pretrain_stack(config: PipelineConfig, hooks: PipelineHooks | None = None, steps: Steps | None = None
                   ) -> PretrainResult:
    """Greedily pretrain every layer of ``config``, stack, fine-tune and evaluate; plain Python, no servers."""
    hooks = hooks or PipelineHooks()
    steps = steps or plain_steps(hooks)
    started = time.perf_counter()
    try:
        data = steps.load(config)
        steps.start(config, data)
        inputs, layers = data.scaled(), []
        for settings in config.resolved_layers():
            layer = steps.layer(settings, inputs, layer_seed(config, settings))
            steps.record(layer)
            layers.append(layer)
            inputs = layer.codes
        return steps.finish(config, data, layers, started)
    except BaseException as error:
        hooks.on_run_failed(error)
        raise


__all__ = ["Steps", "encode_layer", "plain_steps", "pretrain_stack", "stack_and_evaluate", "train_layer"]
