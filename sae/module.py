"""The LightningModule that trains a :class:`SparseAutoencoder` (the model itself knows nothing of training)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_reduce

from sae.metrics import EpochStats
from sae.model import Objective, SparseAutoencoder

Optimizer = Literal["adam", "sgd", "lbfgs"]


def _objective(model: SparseAutoencoder, x: torch.Tensor) -> Objective:
    return model.objective(x)


_COMPILED: dict[str, Callable[[SparseAutoencoder, torch.Tensor], Objective]] = {}


def compiled_objective() -> Callable[[SparseAutoencoder, torch.Tensor], Objective]:
    """``model.objective(x)`` through ``torch.compile``, one wrapper per process.

    The model is an argument, not a closure: its parameters are graph inputs, so a new layer with the same
    config, shapes, dtype and device reuses the compiled graphs (and their compiled backward) instead of
    compiling again; a new config or shape adds one entry to torch's cache.
    """
    if "objective" not in _COMPILED:
        _COMPILED["objective"] = torch.compile(_objective, dynamic=False)  # static kernels: one per batch size
    return _COMPILED["objective"]


FULL_PRECISIONS = ("32-true", "64-true", "bf16-true", "16-true", "32", "64")  # no grad scaler, no autocast


def full_precision(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` runs in full precision (its optimizer steps need no Lightning wrapper)."""
    return str(trainer.precision) in FULL_PRECISIONS


class SAEModule(pl.LightningModule):
    """Trains one layer; logs epoch-level metrics only (per-step logging is slow on sqlite-backed MLflow).

    With ``validation`` (batches of held-out inputs) each epoch also reports ``val_*`` metrics, and training
    stops once ``val_loss`` has not improved for ``patience`` epochs.
    """

    def __init__(
        self,
        model: SparseAutoencoder,
        *,
        lr: float,
        optimizer: Optimizer = "adam",
        lbfgs_max_iter: int = 20,
        history_path: str | None = None,
        validation: Iterable[torch.Tensor] | None = None,
        patience: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.optimizer_name = optimizer
        self.lbfgs_max_iter = lbfgs_max_iter
        self.history: list[dict[str, float]] = []
        self.history_path = history_path
        self._train_stats = EpochStats(model.config)
        self._input_sums: tuple[torch.Tensor, float] | None = None
        self.validation = validation
        self.patience = patience
        self._best_val, self._stale = float("inf"), 0
        self.compile = compile
        self._objective: Callable[[SparseAutoencoder, torch.Tensor], Objective] | None = None
        # Manual optimization: one backward and one step per batch without Lightning's closure bookkeeping,
        # which costs ~0.5 ms a step, a tenth of a small layer's step on 2 CPU cores.
        self.automatic_optimization = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def _batch_mean(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Under data parallelism rho_hat is the mean over the global batch (all ranks), else None (local)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return global_batch_mean

    def on_train_end(self) -> None:
        # ddp_spawn returns only weights to the launching process: hand the history over through a file.
        if self.history_path is not None and self.global_rank == 0:
            Path(self.history_path).write_text(json.dumps(self.history))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.model.parameters())
        # The fused kernels update every parameter in one pass: Adam's step took 1.6-2.2 ms instead of 3.3-5 ms
        # for a 784x200 layer on 2 CPU cores (~10% of a batch-256 step). They also serve compiled steps:
        # compiling the optimizer step itself recompiled for every new optimizer object.
        fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {}
        match self.optimizer_name:
            case "adam":
                return torch.optim.Adam(params, lr=self.lr, **fused)
            case "sgd":
                return torch.optim.SGD(params, lr=self.lr, momentum=0.9, **fused)
            case "lbfgs":
                return torch.optim.LBFGS(
                    params, lr=self.lr, max_iter=self.lbfgs_max_iter, line_search_fn="strong_wolfe"
                )
            case _:
                raise ValueError(f"unknown optimizer {self.optimizer_name!r}; choose adam, sgd or lbfgs")

    def teardown(self, stage: str) -> None:
        # Spawned ranks (history_path is set only for them) leave their gloo group together here, the last hook
        # of fit: Lightning destroys it at exit for nccl only, and a gloo group still alive when a spawned rank
        # exits can abort it ("terminate called without an active exception": its threads die joinable).
        if self.history_path is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def on_train_epoch_start(self) -> None:
        # Every epoch visits the same rows: the input sums of the first serve the rest (two reductions a step).
        self._train_stats = EpochStats(self.model.config, inputs=self._input_sums)

    def training_step(self, batch: torch.Tensor | list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        # A "batch" from train_autoencoder is a short list of mini-batches, one optimizer step each: Lightning's
        # per-batch bookkeeping (~1 ms) is then paid once per list instead of once per step.
        last = torch.zeros(())
        for x in batch if isinstance(batch, list) else [batch]:
            last = self._step(x)
        return last

    def on_train_start(self) -> None:
        # Full-precision runs step the torch optimizer directly: Lightning's optimizer wrapper only adds
        # hook dispatch there (~0.4 ms a step). Mixed precision keeps the wrapper, which owns the grad scaler.
        full = full_precision(self.trainer)
        self._opt = self.optimizers(use_pl_optimizer=not full)
        self._objective = self._choose_objective(full)

    def _choose_objective(self, full_precision: bool) -> Callable[[SparseAutoencoder, torch.Tensor], Objective] | None:
        """The compiled objective when ``compile`` applies here, else None (eager), with one warning if not."""
        if not self.compile:
            return None
        reason = None
        if self.optimizer_name == "lbfgs":
            reason = "optimizer='lbfgs' re-evaluates the objective inside its line search"
        elif self._batch_mean is not None:
            reason = "data-parallel training all-reduces inside the objective"
        elif not full_precision:
            reason = f"precision={self.trainer.precision} runs under autocast"
        if reason is None:
            return compiled_objective()
        warnings.warn(f"compile=True ignored: {reason}; training eagerly", stacklevel=2)
        return None

    def _step(self, batch: torch.Tensor) -> torch.Tensor:
        opt = self._opt
        if self.optimizer_name == "lbfgs":
            first: list[torch.Tensor] = []

            def closure() -> torch.Tensor:
                opt.zero_grad()
                obj = self.model.objective(batch, batch_mean=self._batch_mean)
                if not first:  # L-BFGS evaluates many points a step: count the batch once, at the start point
                    self._train_stats.update(obj, batch)
                    first.append(obj.total)
                self.manual_backward(obj.total)
                return obj.total

            opt.step(closure=closure)
            return first[0].detach()
        opt.zero_grad()
        obj = self._compiled(batch) if self._objective is not None else None
        if obj is None:
            obj = self.model.objective(batch, batch_mean=self._batch_mean)
        self.manual_backward(obj.total)
        opt.step()
        self._train_stats.update(obj, batch)
        return obj.total.detach()

    def _compiled(self, batch: torch.Tensor) -> Objective | None:
        """The compiled objective, or None after warning once that compiling failed (eager from then on)."""
        assert self._objective is not None
        try:
            return self._objective(self.model, batch)
        except Exception as error:  # noqa: BLE001 - any compiler failure: training goes on eagerly
            self._objective = None
            warnings.warn(f"compile=True failed ({type(error).__name__}: {error}); training eagerly", stacklevel=2)
            return None

    def on_train_epoch_end(self) -> None:
        metrics = self._train_stats.compute()
        if not metrics:
            return
        self._input_sums = self._train_stats.inputs
        if not torch.isfinite(torch.tensor(metrics["loss"])):
            raise FloatingPointError(
                f"training loss became {metrics['loss']} at epoch {self.current_epoch}; lower lr or check the data"
            )
        if self.validation is not None:
            metrics.update(self._validate())
            self._early_stop(metrics["val_loss"])
        self.model.rho_hat = self._train_stats.rho_hat
        self.history.append({"epoch": float(self.current_epoch), **metrics})
        log_epoch_metrics(self, metrics)

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Clean-input metrics on the validation data, as ``val_*`` (a plain pass: no Lightning val loop)."""
        assert self.validation is not None
        stats = EpochStats(self.model.config)
        self.model.eval()
        for x in self.validation:
            x = x.to(self.device)
            stats.update(self.model.objective(x, corrupt=False), x)
        self.model.train()
        return stats.compute(prefix="val_")

    def _early_stop(self, val_loss: float) -> None:
        # Every rank sees the same (all-reduced) val_loss, so they all stop together.
        if val_loss < self._best_val:
            self._best_val, self._stale = val_loss, 0
        else:
            self._stale += 1
        if self.patience is not None and self._stale >= self.patience:
            self.trainer.should_stop = True


def log_epoch_metrics(module: pl.LightningModule, metrics: dict[str, float]) -> None:
    """Hand one epoch's metrics to the Trainer's loggers as ``log_dict(on_epoch=True)`` would, minus its cost.

    Same keys plus ``epoch``, same step (Lightning batches stepped so far, minus one), then ``save()``; the values stay the float64
    numbers of ``history`` instead of float32 tensors. Lightning's result collection cost ~13 ms an epoch
    (tensors, reductions, device moves), more than a whole epoch of a small layer.
    """
    trainer = module.trainer
    if not trainer.loggers:
        return
    row = {**metrics, "epoch": trainer.current_epoch}
    step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1  # what Lightning's epoch-end logging passes
    for logger in trainer.loggers:
        logger.log_metrics(metrics=row, step=step)
        logger.save()


def global_batch_mean(codes: torch.Tensor) -> torch.Tensor:
    """(local batch, d) -> (d,) mean over every rank's batch; differentiable (gradients reach every rank)."""
    total = all_reduce(codes.sum(dim=0))
    count = codes.new_tensor(float(codes.shape[0]))
    dist.all_reduce(count)
    return total / count
