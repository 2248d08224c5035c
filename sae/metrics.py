"""Per-epoch statistics of a layer, accumulated batch by batch without leaving the device."""

from __future__ import annotations

import torch
import torch.distributed as dist

from sae.config import SAEConfig
from sae.model import Objective


class EpochStats:
    """Running sums over one epoch; ``compute()`` turns them into the reported metrics.

    Active: a code is active above ``config.active_threshold`` (0.5 * target for sigmoid, |code| above it for
    tanh, above 0 for relu and topk). L0 is the mean number of active units per sample; a unit is dead when
    it was never active during the epoch.
    """

    def __init__(self, config: SAEConfig) -> None:
        self.config = config
        self.threshold = config.active_threshold
        self.sums: torch.Tensor | None = None  # total, reconstruction, sparsity, weight_decay, sse, active, n
        self.code_sum: torch.Tensor | None = None
        self.ever_active: torch.Tensor | None = None
        self.x_sum: torch.Tensor | None = None
        self.x_sq: torch.Tensor | None = None
        self.rho_hat: torch.Tensor | None = None  # (d_hidden,) mean code per unit, set by compute()

    @torch.no_grad()
    def update(self, obj: Objective, x: torch.Tensor) -> None:
        codes = obj.codes.detach()
        b = x.shape[0]
        magnitude = codes.abs() if self.config.encoder_activation == "tanh" else codes
        active = magnitude > self.threshold
        row = torch.stack(
            [
                obj.total.detach() * b,
                obj.reconstruction.detach() * b,
                obj.sparsity.detach() * b,
                obj.weight_decay.detach() * b,
                (obj.recon.detach() - x).pow(2).sum(),
                active.sum().to(x.dtype),
                x.new_tensor(float(b)),
            ]
        ).to(torch.float64)
        if self.sums is None:
            self.sums = row
            self.code_sum = codes.sum(0, dtype=torch.float64)
            self.ever_active = active.any(0)
            self.x_sum = x.sum(0, dtype=torch.float64)
            self.x_sq = x.pow(2).sum(0, dtype=torch.float64)
        else:
            assert self.code_sum is not None and self.ever_active is not None
            assert self.x_sum is not None and self.x_sq is not None
            self.sums += row
            self.code_sum += codes.sum(0, dtype=torch.float64)
            self.ever_active |= active.any(0)
            self.x_sum += x.sum(0, dtype=torch.float64)
            self.x_sq += x.pow(2).sum(0, dtype=torch.float64)

    def _all_reduce(self) -> None:
        """Sum the statistics over data-parallel ranks so every rank reports the global epoch."""
        if not (dist.is_available() and dist.is_initialized()) or self.sums is None:
            return
        for t in (self.sums, self.code_sum, self.x_sum, self.x_sq):
            dist.all_reduce(t)
        flags = self.ever_active.to(torch.int32)  # type: ignore[union-attr]
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.ever_active = flags.bool()

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Metrics for the epoch: loss terms (per-sample means), mse, fvu, rho_hat mean/std, l0, dead_fraction."""
        if self.sums is None:
            return {}
        self._all_reduce()
        assert self.code_sum is not None and self.ever_active is not None
        assert self.x_sum is not None and self.x_sq is not None
        total, rec, spa, wd, sse, active, n = self.sums.tolist()
        sst = (self.x_sq - self.x_sum.pow(2) / n).sum().item()
        rho_hat = self.code_sum / n
        self.rho_hat = rho_hat.float().cpu()
        out = {
            "loss": total / n,
            "reconstruction": rec / n,
            "sparsity": spa / n,
            "weight_decay": wd / n,
            "mse": sse / (n * self.config.d_in),
            "fvu": sse / sst if sst > 0 else float("nan"),
            "rho_hat_mean": rho_hat.mean().item(),
            "rho_hat_std": rho_hat.std(unbiased=False).item(),
            "l0": active / n,
            "dead_fraction": 1.0 - self.ever_active.float().mean().item(),
        }
        return {prefix + k: v for k, v in out.items()}
