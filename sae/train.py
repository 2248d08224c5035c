"""Train one layer with a pytorch_lightning Trainer: ``train_autoencoder``.

Lightning (2 s to import, with the torchmetrics, SciPy and SymPy it loads) is imported by the functions that
train, not by this module: code that only reuses trained layers never pays for it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sae.batches import ShuffledBatches, row_chunks
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.quiet import quiet_lightning

if TYPE_CHECKING:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback

    from sae.module import Optimizer

ArrayLike = np.ndarray | torch.Tensor
_CHUNK = 65_536
STEPS_PER_LIGHTNING_BATCH = 8  # optimizer steps per Lightning batch: amortises Lightning's per-batch overhead


def check_inputs(x: ArrayLike, config: SAEConfig, name: str = "X") -> None:
    """Raise one clear ValueError if ``x`` cannot train this layer (shape, finiteness, range)."""
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} has shape {shape}: need a 2-D array (samples, features); reshape it to (n, d_in)")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples): pass at least one row")
    if shape[1] != config.d_in:
        raise ValueError(
            f"{name} has {shape[1]} features but the layer expects d_in={config.d_in}; "
            "set d_in to the feature count or select the right columns"
        )
    lo, hi, bad = _range_and_nonfinite(x)
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or infinite values: clean or impute them before training")
    if config.decoder_activation == "sigmoid" and (lo < 0.0 or hi > 1.0):
        raise ValueError(
            f"{name} has values in [{lo:.4g}, {hi:.4g}] but a sigmoid decoder can only output [0, 1]: "
            "scale the inputs to [0, 1] (e.g. min-max to [0.1, 0.9]) or use decoder_activation='linear'"
        )


def _range_and_nonfinite(x: ArrayLike) -> tuple[float, float, int]:
    """(min, max, count of NaN/inf) in one chunked pass; the count is only computed when min/max show one."""
    lo, hi, bad = np.inf, -np.inf, 0
    if isinstance(x, torch.Tensor):
        chunks = (x[start : start + _CHUNK] for start in range(0, x.shape[0], _CHUNK))
    else:
        chunks = (torch.from_numpy(chunk) for _, chunk in row_chunks(x, _CHUNK, dtype=None))
    for t in chunks:
        c_lo, c_hi = (v.item() for v in torch.aminmax(t.detach().float()))
        if not (np.isfinite(c_lo) and np.isfinite(c_hi)):  # NaN propagates into min/max; inf shows as one
            finite = torch.isfinite(t)
            bad += int((~finite).sum())
            if finite.any():
                c_lo, c_hi = t[finite].min().item(), t[finite].max().item()
            else:
                continue
        lo, hi = min(lo, c_lo), max(hi, c_hi)
    return lo, hi, bad


def train_autoencoder(
    X: ArrayLike,
    config: SAEConfig,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: Optimizer = "adam",
    seed: int = 0,
    validation: ArrayLike | None = None,
    logger: Any = None,
    callbacks: Sequence[Callback] = (),
    patience: int | None = 5,
    trainer_options: dict[str, Any] | None = None,
    deterministic: bool | None = None,
    compile: bool = False,
) -> SparseAutoencoder:
    """Train one layer on ``X`` (n, d_in) and return it, with ``.history`` holding one dict of metrics per epoch.

    ``optimizer='lbfgs'`` trains full-batch, as the classic tutorial did. With ``validation`` the loss on it
    is reported each epoch as ``val_loss`` and training stops after ``patience`` epochs without improvement
    (``patience=None`` turns early stopping off). ``trainer_options`` go straight to ``pl.Trainer``
    (accelerator, devices, strategy, precision, num_nodes). Same seed, data and config give identical weights
    on CPU: every random draw (init, shuffling, noise) comes from the seed and CPU kernels are deterministic
    for a fixed thread count. ``deterministic=True`` also forces torch's deterministic algorithms, which GPUs
    need for bit-identical runs and which cost ~10% speed on CPU (default: only on GPU).
    ``compile=True`` runs the objective (and its backward) through ``torch.compile``; compiled graphs are shared by every layer of the same config and shapes in this process, and a
    failed compile warns once and trains eagerly. Not with lbfgs, data parallelism or mixed precision (warns).
    """
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be at least 1")
    if lr <= 0:
        raise ValueError(f"lr={lr}: must be positive")
    check_inputs(X, config, "X")
    if validation is not None:
        check_inputs(validation, config, "validation")
    import pytorch_lightning as pl

    from sae.module import SAEModule

    pl.seed_everything(seed, workers=True, verbose=False)
    options = {"accelerator": "cpu", "devices": 1, **(trainer_options or {})}
    spawn = "spawn" in str(options.get("strategy", ""))
    # The layer's own generator (init, noise masks; the batches have theirs): layers trained at once in threads
    # (tuning trials) do not draw from one global RNG, so each gets the weights it would get alone. Not under
    # ddp_spawn: torch.multiprocessing cannot share a generator with the spawned ranks (same draws either way).
    model = SparseAutoencoder(config, generator=None if spawn else torch.Generator().manual_seed(seed))
    history_path = _empty_temp_file(".json") if spawn else None  # where a spawned rank 0 leaves the history
    if _single_cuda_device(options) and not isinstance(X, np.memmap):
        # One copy to the GPU up front instead of one per batch (the batches index it there).
        X = torch.as_tensor(X).to("cuda")
        validation = None if validation is None else torch.as_tensor(validation).to("cuda")
    val = None if validation is None else ShuffledBatches(validation, max(batch_size, 1024), shuffle=False)
    module = SAEModule(
        model,
        lr=lr,
        optimizer=optimizer,
        history_path=history_path and str(history_path),
        validation=val,
        patience=patience,
        compile=compile,
    )
    full_batch = optimizer == "lbfgs"
    train = ShuffledBatches(X, X.shape[0] if full_batch else batch_size, seed=seed, shuffle=not full_batch)
    if deterministic is None:
        deterministic = options["accelerator"] != "cpu"
    try:
        with quiet_lightning():
            trainer = quiet_trainer(
                epochs, n_batches=len(train), logger=logger, callbacks=callbacks, deterministic=deterministic,
                **options
            )
            trainer.fit(module, train_dataloaders=SizedLoader(train, group=STEPS_PER_LIGHTNING_BATCH))
        model.history = module.history
        if history_path is not None:  # ddp_spawn trained copies in child processes; rank 0 left the history here
            model.history = json.loads(history_path.read_text() or "[]")
    finally:
        if history_path is not None:
            history_path.unlink(missing_ok=True)
    return model.cpu().eval()


def _empty_temp_file(suffix: str) -> Path:
    """A new empty file in the temp directory; its descriptor is closed (the caller removes the file)."""
    descriptor, name = tempfile.mkstemp(prefix="sae-", suffix=suffix)
    os.close(descriptor)
    return Path(name)


def quiet_trainer(
    epochs: int,
    *,
    n_batches: int,
    logger: Any = None,
    callbacks: Sequence[Callback] = (),
    **options: Any,
) -> pl.Trainer:
    """A Trainer that leaves nothing behind: no progress bar, summary, checkpoints or default logger."""
    import pytorch_lightning as pl

    return pl.Trainer(
        max_epochs=epochs,
        logger=logger if logger is not None else False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, n_batches)),
        **options,
    )


def _single_cuda_device(options: dict[str, Any]) -> bool:
    accelerator = str(options.get("accelerator", "cpu"))
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return False
    return options.get("devices", 1) in (1, "1") and options.get("num_nodes", 1) == 1 and options.get(
        "strategy", "auto"
    ) == "auto"


class SizedLoader:
    """Hands Lightning a sized iterable (a bare list would be read as several dataloaders).

    With ``group > 1`` each item is a list of up to ``group`` mini-batches that SAEModule steps through.
    """

    def __init__(self, batches: Iterable[Any], group: int = 1) -> None:
        self.batches = batches
        self.group = group

    def __iter__(self) -> Iterator[Any]:
        if self.group == 1:
            yield from self.batches
            return
        chunk: list[Any] = []
        for batch in self.batches:
            chunk.append(batch)
            if len(chunk) == self.group:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.group)  # type: ignore[arg-type]
