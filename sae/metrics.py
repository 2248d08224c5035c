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

    def __init__(self, config: SAEConfig, inputs: tuple[torch.Tensor, float] | None = None) -> None:
        """``inputs``: (sum of x (d_in,), sum of x^2) over the same rows, all ranks, from an earlier epoch over
        the same data (``self.inputs`` after its ``compute()``); the steps then skip those two reductions."""
        self.config = config
        self.known_inputs = inputs
        self.inputs: tuple[torch.Tensor, float] | None = inputs  # global input sums, set by compute()
        self.threshold = config.active_threshold
        self.sums: torch.Tensor | None = None  # total, reconstruction, sparsity, weight_decay (x b), sum x^2
        self.n = 0  # samples seen
        self.code_sum: torch.Tensor | None = None  # (d_hidden,)
        self.active_count: torch.Tensor | None = None  # (d_hidden,) samples on which each unit was active
        self.x_sum: torch.Tensor | None = None  # (d_in,)
        self.rho_hat: torch.Tensor | None = None  # (d_hidden,) mean code per unit, set by compute()

    @torch.no_grad()
    def update(self, obj: Objective, x: torch.Tensor) -> None:
        # Runs every step: keep it to a few cheap reductions (batch sums in float32, totals in float64); each
        # small op costs a thread wake-up on a busy CPU, so the input sums are skipped once they are known.
        codes = obj.codes.detach()
        b = x.shape[0]
        magnitude = codes.abs() if self.config.encoder_activation == "tanh" else codes
        terms = [obj.total.detach(), obj.reconstruction.detach(), obj.sparsity.detach(), obj.weight_decay.detach()]
        if self.known_inputs is None:
            flat = x.reshape(-1)
            terms.append(torch.dot(flat, flat) / b)
        # The sample count stays on the host: a Python float copied to a GPU each step would block the host
        # until the queue drains.
        row = torch.stack(terms).to(torch.float64) * b
        self.n += b
        unit_active = (magnitude > self.threshold).sum(0)
        if self.sums is None:
            self.sums = row
            self.code_sum = codes.sum(0).to(torch.float64)
            self.active_count = unit_active
            if self.known_inputs is None:
                self.x_sum = x.sum(0).to(torch.float64)
        else:
            assert self.code_sum is not None and self.active_count is not None
            self.sums += row
            self.code_sum += codes.sum(0)
            self.active_count += unit_active
            if self.known_inputs is None:
                assert self.x_sum is not None
                self.x_sum += x.sum(0)

    def _all_reduce(self) -> None:
        """Sum the statistics over data-parallel ranks so every rank reports the global epoch."""
        if not (dist.is_available() and dist.is_initialized()) or self.sums is None:
            return
        for t in (self.sums, self.code_sum, self.active_count, self.x_sum):
            if t is not None:
                dist.all_reduce(t)
        n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.sums.device)
        dist.all_reduce(n)
        self.n = int(n.item())

    def compute(self, prefix: str = "") -> dict[str, float]:
        """Metrics for the epoch: loss terms (per-sample means), mse, fvu, rho_hat mean/std, l0, dead_fraction."""
        if self.sums is None:
            return {}
        self._all_reduce()
        assert self.code_sum is not None and self.active_count is not None
        total, rec, spa, wd, *rest = self.sums.tolist()
        if self.known_inputs is None:
            assert self.x_sum is not None
            self.inputs = (self.x_sum.clone(), rest[0])
        x_sum, x_sq = self.inputs  # type: ignore[misc]
        n = float(self.n)
        sse = 2.0 * rec  # reconstruction is half the per-sample sum of squared errors
        sst = x_sq - (x_sum.pow(2) / n).sum().item()
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
            "l0": self.active_count.sum().item() / n,
            "dead_fraction": (self.active_count == 0).float().mean().item(),
        }
        return {prefix + k: v for k, v in out.items()}
