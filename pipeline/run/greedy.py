"""Greedy layer-wise pretraining: layer k trains on the codes of layers 1..k-1; then stack, fine-tune, evaluate,
register.

``pretrain_stack`` owns the one loop over layers. How a step runs is pluggable (``Steps``): plain function
calls here, cached Prefect tasks in ``flows.pretrain``; the order, the per-layer seed and the failure hook
are the same for both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import PipelineConfig, ResolvedLayer
from pipeline.data.codes import encode_in_chunks
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.data.scaling import fit_scaling, transform_in_chunks
from pipeline.evaluation.layer_probes import layer_test_metrics, probe_accuracies
from pipeline.run.finetune import FinetuneResult, choose_encoder, finetune_stack
from pipeline.run.hooks import PipelineHooks
from pipeline.run.results import LayerResult, PretrainResult
from sae import SAEConfig, SparseAutoencoder, train_autoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder


def sae_config(settings: ResolvedLayer, d_in: int) -> SAEConfig:
    """The SAEConfig of a resolved layer fed ``d_in`` features."""
    return SAEConfig(d_in=d_in, d_hidden=settings.hidden, **settings.layer_fields())


def layer_seed(config: PipelineConfig, settings: ResolvedLayer) -> int:
    """The seed layer ``settings.index`` trains with (init, shuffling, noise)."""
    return config.seed + settings.index


def code_scaling(settings: ResolvedLayer, codes_below: Splits) -> Scaling:
    """The scaling layer ``settings.index`` (> 0) applies to the codes below, fitted on their training split."""
    return fit_scaling(codes_below.train, settings.code_scaling)


def scale_codes(scaling: Scaling, codes: Splits) -> Splits:
    """Every split through ``scaling``; memory-mapped codes go to unnamed scratch memmaps."""
    if scaling.kind == "none":
        return codes
    return Splits(*(transform_in_chunks(scaling, x, on_disk=isinstance(x, np.memmap)) for x in codes))


def layer_inputs(config: PipelineConfig, data: LoadedData, layers: list[LayerResult]) -> Splits:
    """What the next layer trains on: the scaled data, or the codes of the top layer so far, rescaled."""
    return inputs_for(config.layer_settings(len(layers)), data, layers)


def inputs_for(settings: ResolvedLayer, data: LoadedData, layers: list[LayerResult]) -> Splits:
    """What a layer with ``settings`` trains on above ``layers``: the scaled data, or the top codes after its
    code_scaling (tuning trials differ from the config in their settings, not in this rule)."""
    if not layers:
        return data.scaled()
    return scale_codes(code_scaling(settings, layers[-1].codes), layers[-1].codes)


def train_layer(
    settings: ResolvedLayer,
    inputs: Splits,
    *,
    seed: int,
    hooks: PipelineHooks | None = None,
    codes_dir: Path | None = None,
    fit_rows: np.ndarray | None = None,
) -> LayerResult:
    """Train one layer on ``inputs.train`` (its rows ``fit_rows`` when given: ``LoadedData.pretrain_rows``;
    early stopping on ``inputs.val``) and encode every split."""
    hooks = hooks or PipelineHooks()
    start = time.perf_counter()
    train = inputs.train if fit_rows is None else np.asarray(inputs.train[fit_rows])
    model = train_autoencoder(
        train,
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


def layer_trainer(settings: ResolvedLayer, inputs: Splits, *, seed: int, hooks: PipelineHooks | None = None,
                  fit_rows: np.ndarray | None = None) -> Callable[[Path], LayerResult]:
    """``train_layer`` as the layer store calls it: given where the codes go, train and encode the layer."""
    return lambda codes_dir: train_layer(settings, inputs, seed=seed, hooks=hooks, codes_dir=codes_dir,
                                         fit_rows=fit_rows)


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
        for split, x in zip(Splits._fields, inputs, strict=True)
    ))
    return LayerResult(settings, model, codes, layer_test_metrics(model, inputs.test, codes.test), seconds, reused)


def stack_encoder(config: PipelineConfig, data: LoadedData, layers: list[LayerResult]) -> StackedEncoder:
    """The trained layers as one encoder, with the data's scaling in front."""
    return StackedEncoder.from_autoencoders(
        data.scaling,
        [layer.model for layer in layers],
        meta={"name": config.name, "source": data.source, "fingerprint": data.fingerprint,
              "feature_names": list(data.feature_names)},
        code_scalings=[code_scaling(above.settings, below.codes) for below, above in zip(layers, layers[1:], strict=False)],
    )


def finetune_if_labelled(config: PipelineConfig, data: LoadedData, encoder: StackedEncoder, hooks: PipelineHooks,
             top_codes: Splits | None = None) -> FinetuneResult | None:
    """Fine-tune a copy of ``encoder`` with a softmax head when the data is labelled (None otherwise); the top
    layer's ``top_codes`` (when given) start it without encoding the splits again."""
    if data.y_train is None or config.finetune.epochs <= 0:
        return None
    finetuned = finetune_stack(encoder, data, config.finetune, seed=config.seed,
                               trainer_options=config.trainer.model_dump(), logger=hooks.finetune_logger(),
                               codes=top_codes)
    hooks.on_finetune_end(finetuned)
    return finetuned


def evaluate_run(
    config: PipelineConfig,
    data: LoadedData,
    layers: list[LayerResult],
    encoder: StackedEncoder,
    finetuned: FinetuneResult | None,
    *,
    hooks: PipelineHooks,
    started: float,
    raw_probe: Future[float] | None = None,
) -> PretrainResult:
    """Probe every layer's codes (when labelled), assemble the result and hand it to ``hooks.on_run_end``.

    ``raw_probe``: the raw-input probe already started for this data (``raw_probe_ahead``), else fitted here.
    The probes run on other threads while ``hooks.on_encoders`` logs the models: their matrix products release
    the GIL, and the models do not depend on them.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="sae-evaluate") as pool:
        probing = (pool.submit(probe_accuracies, data, layers, seed=config.seed, raw=raw_probe,
                               accelerator=config.trainer.accelerator,
                               validate_from_per_class=config.finetune.validate_from_per_class)
                   if data.y_train is not None else None)
        hooks.on_encoders(data, encoder, finetuned)
        probes = probing.result() if probing is not None else {}
    result = PretrainResult(
        config=config,
        data=data,
        layers=layers,
        encoder=encoder,
        finetuned=finetuned,
        probes=probes,
        seconds=time.perf_counter() - started,
        encoder_choice=choose_encoder(config.register.encoder, finetuned),
    )
    hooks.on_run_end(result)
    return result


# (settings, inputs, seed, the training rows it fits on: None = all) -> the trained (or cached) layer
LayerStep = Callable[[ResolvedLayer, Splits, int, np.ndarray | None], LayerResult]


@dataclass
class Steps:
    """How each step of a run is carried out; the defaults are plain calls (``flows.pretrain`` wraps tasks)."""

    load: Callable[[PipelineConfig], LoadedData]
    start: Callable[[PipelineConfig, LoadedData], None]
    layer: LayerStep
    record: Callable[[LayerResult], None]
    stack: Callable[[PipelineConfig, LoadedData, list[LayerResult]], StackedEncoder]
    finetune: Callable[[PipelineConfig, LoadedData, list[LayerResult], StackedEncoder], FinetuneResult | None]
    # (config, data, layers, encoder, finetuned, started) -> the evaluated result, handed to hooks.on_run_end
    evaluate: Callable[[PipelineConfig, LoadedData, list[LayerResult], StackedEncoder, FinetuneResult | None, float],
                       PretrainResult]
    register: Callable[[PretrainResult], None]


def plain_steps(hooks: PipelineHooks) -> Steps:
    """Every step as a direct function call, reporting to ``hooks``."""
    return Steps(
        load=lambda config: load_data(config.data, config.seed),
        start=hooks.on_run_start,
        layer=lambda settings, inputs, seed, rows: train_layer(settings, inputs, seed=seed, hooks=hooks, fit_rows=rows),
        record=hooks.on_layer_end,
        stack=stack_encoder,
        finetune=lambda config, data, layers, encoder: finetune_if_labelled(config, data, encoder, hooks, layers[-1].codes),
        evaluate=lambda config, data, layers, encoder, finetuned, started: evaluate_run(
            config, data, layers, encoder, finetuned, hooks=hooks, started=started),
        register=hooks.on_register,
    )


def train_layers(config: PipelineConfig, data: LoadedData, layer: LayerStep,
                 record: Callable[[LayerResult], None] = lambda layer: None) -> list[LayerResult]:
    """The one loop over layers: each trains (``layer``: plain, or a cached Prefect task) on the codes below."""
    layers: list[LayerResult] = []
    for settings in config.resolved_layers():
        done = layer(settings, layer_inputs(config, data, layers), layer_seed(config, settings), data.pretrain_rows)
        record(done)
        layers.append(done)
    return layers


def pretrain_stack(config: PipelineConfig, hooks: PipelineHooks | None = None, steps: Steps | None = None
                   ) -> PretrainResult:
    """Greedily pretrain every layer of ``config``, stack, fine-tune and evaluate; plain Python, no servers."""
    hooks = hooks or PipelineHooks()
    steps = steps or plain_steps(hooks)
    started = time.perf_counter()
    try:
        data = steps.load(config)
        steps.start(config, data)
        layers = train_layers(config, data, steps.layer, steps.record)
        encoder = steps.stack(config, data, layers)
        finetuned = steps.finetune(config, data, layers, encoder)
        result = steps.evaluate(config, data, layers, encoder, finetuned, started)
        steps.register(result)
        return result
    except BaseException as error:
        hooks.on_run_failed(error)
        raise


__all__ = ["Steps", "encode_layer", "evaluate_run", "finetune_if_labelled", "inputs_for", "layer_trainer",
           "plain_steps", "pretrain_stack", "stack_encoder", "train_layer", "train_layers"]
