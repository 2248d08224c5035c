"""Sparsity penalties and the TopK activation as small pure functions."""

from __future__ import annotations

import torch

_EPS = 1e-7


def kl_penalty(rho_hat: torch.Tensor, target: float) -> torch.Tensor:
    """sum_j KL(target || rho_hat_j) for Bernoulli means. rho_hat: (d_hidden,) -> scalar."""
    rho_hat = rho_hat.clamp(_EPS, 1.0 - _EPS)
    rho = target
    return (rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))).sum()


def l1_penalty(codes: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_j |code_j|. codes: (batch, d_hidden) -> scalar."""
    return codes.abs().sum(dim=1).mean()


def topk_mask(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k largest entries of each row. pre: (batch, d_hidden) -> (batch, d_hidden)."""
    idx = pre.topk(k, dim=1).indices
    return torch.zeros_like(pre, dtype=torch.bool).scatter_(1, idx, torch.ones_like(idx, dtype=torch.bool))


def weight_decay_penalty(weights: list[torch.Tensor], weight_decay: float) -> torch.Tensor:
    """weight_decay / 2 * sum of squared entries of each distinct weight matrix."""
    return 0.5 * weight_decay * sum(w.pow(2).sum() for w in weights)
