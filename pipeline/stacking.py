"""Greedy layer-wise pretraining: layer k trains on the codes of layers 1..k-1; then stack, fine-tune, evaluate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.codes import encode_in_chunks
from pipeline.config import PipelineConfig
from pipeline.data import LoadedData, load_data
from pipeline.evaluate import layer_test_metrics, probe_accuracies
from pipeline.finetune import FinetuneResult, finetune_stack
from pipeline.hooks import PipelineHooks
from pipeline.results import PretrainResult
from sae import SAEConfig, SparseAutoencoder, train_autoencoder
from sae.stack import StackedEncoder


@dataclass
class LayerResult:
    """One trained layer with the codes it produces for the next."""

    index: int  # 0-based
    settings: Any  # the resolved layer settings from PipelineConfig
    model: SparseAutoencoder
    train_codes: np.ndarray  # (n_train, hidden), maybe memory-mapped
    test_codes: np.ndarray  # (n_test, hidden)
    test_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False  # loaded from a cache rather than trained

    @property
    def history(self) -> list[dict[str, float]]:
        return self.model.history


def sae_config(settings: Any, d_in: int) -> SAEConfig:
    """The SAEConfig of a resolved layer fed ``d_in`` features."""
    return SAEConfig(
        d_in=d_in,
        d_hidden=settings.hidden,
        sparsity=settings.sparsity,
        target=settings.target,
        beta=settings.beta,
        k=settings.k,
        weight_decay=settings.weight_decay,
        encoder_activation=settings.encoder_activation,
        decoder_activation=settings.decoder_activation,
        tied=settings.tied,
        noise=settings.noise,
    )


def trainer_options(settings: Any) -> dict[str, Any]:
    """Lightning Trainer arguments from the layer's resolved ``trainer`` section."""
    t = settings.trainer
    return {
        "accelerator": t.accelerator,
        "devices": t.devices,
        "num_nodes": t.num_nodes,
        "strategy": t.strategy,
        "precision": t.precision,
    }


def train_layer(
    settings: Any,
    train_inputs: np.ndarray,
    test_inputs: np.ndarray,
    *,
    seed: int,
    hooks: PipelineHooks | None = None,
    codes_dir: Path | None = None,
) -> LayerResult:
    """Train one layer on ``train_inputs`` and encode both splits for the next layer."""
    hooks = hooks or PipelineHooks()
    start = time.perf_counter()
    model = train_autoencoder(
        train_inputs,
        sae_config(settings, int(train_inputs.shape[1])),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        optimizer=settings.optimizer,
        seed=seed,
        validation=test_inputs,
        logger=hooks.layer_logger(settings.index, settings),
        callbacks=hooks.layer_callbacks(settings.index, settings),
        patience=settings.early_stopping_patience,
        trainer_options=trainer_options(settings),
    )
    return layer_result(settings, model, train_inputs, test_inputs, codes_dir=codes_dir, seconds=time.perf_counter() - start)


def layer_result(
    settings: Any,
    model: SparseAutoencoder,
    train_inputs: np.ndarray,
    test_inputs: np.ndarray,
    *,
    codes_dir: Path | None = None,
    seconds: float = 0.0,
    reused: bool = False,
) -> LayerResult:
    """Encode both splits with a trained layer and measure it on the test split."""
    d = settings.hidden
    train_path = None if codes_dir is None else codes_dir / "train_codes.npy"
    test_path = None if codes_dir is None else codes_dir / "test_codes.npy"
    train_codes = encode_in_chunks(model.encode, train_inputs, d, out_path=train_path)
    test_codes = encode_in_chunks(model.encode, test_inputs, d, out_path=test_path)
    metrics = layer_test_metrics(model, test_inputs)
    return LayerResult(settings.index, settings, model, train_codes, test_codes, metrics, seconds, reused)


def prepare(config: PipelineConfig) -> tuple[LoadedData, np.ndarray, np.ndarray]:
    """Load and validate the data; return it with the scaled train and test inputs of layer 1."""
    data = load_data(config.data, config.seed)
    return data, data.scaled_train(), data.scaled_test()


def finish(
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
    probes = probe_accuracies(data, layers, seed=config.seed) if data.y_train is not None else {}
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


def pretrain_stack(config: PipelineConfig, hooks: PipelineHooks | None = None) -> PretrainResult:
    """Greedily pretrain every layer of ``config``, stack, fine-tune and evaluate; plain Python, no servers."""
    hooks = hooks or PipelineHooks()
    started = time.perf_counter()
    try:
        data, train_inputs, test_inputs = prepare(config)
        hooks.on_run_start(config, data)
        layers: list[LayerResult] = []
        for settings in config.resolved_layers():
            layer = train_layer(settings, train_inputs, test_inputs, seed=config.seed + settings.index, hooks=hooks)
            hooks.on_layer_end(layer)
            layers.append(layer)
            train_inputs, test_inputs = layer.train_codes, layer.test_codes
        return finish(config, data, layers, hooks=hooks, started=started)
    except BaseException as error:
        hooks.on_run_failed(error)
        raise


__all__ = ["LayerResult", "finish", "prepare", "pretrain_stack", "train_layer"]
