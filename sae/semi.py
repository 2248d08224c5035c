"""Semi-supervised terms for fine-tuning on few labels, as small pure functions.

Both terms ask the classifier to predict on a perturbed row what it predicts on the clean one: masking noise
(consistency, the Pi-model of Laine & Aila) and the most damaging small step (virtual adversarial training,
Miyato et al.). ``classify`` maps scaled inputs (batch, d_in) to logits (batch, n_classes); ``p`` is the clean
prediction (batch, n_classes), a fixed target (no gradient flows into it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Classify = Callable[[torch.Tensor], torch.Tensor]
VAT_XI = 1e-6  # norm of the probe step of the power iteration (the paper's value)


@dataclass(frozen=True)
class SemiTerms:
    """How much the unlabeled terms weigh and how they perturb (all in the encoder's scaled-input space)."""

    consistency: float  # weight of the masking-consistency term
    mask: float  # fraction of scaled inputs zeroed for it, in [0, 1)
    vat: float  # weight of the virtual-adversarial term
    radius: float  # L2 norm of the adversarial step of each row (absolute, in scaled-input units)
    ramp: float  # fraction of the steps over which both weights ramp up from ~0; 0 = full weight at once
    steps: int  # total optimizer steps (the ramp's time axis)

    def weight(self, step: int) -> float:
        """The ramp's factor at 0-based ``step``."""
        return ramp_weight(step / max(self.steps - 1, 1), self.ramp)


def ramp_weight(t: float, length: float) -> float:
    """exp(-5 (1 - min(t / length, 1))^2): ~0.007 at t = 0, 1 from t = length on; ``length`` 0 gives 1."""
    if length <= 0:
        return 1.0
    return math.exp(-5.0 * (1.0 - min(t / length, 1.0)) ** 2)


def kl_to(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(p || softmax(logits)): (batch, k), (batch, k) -> scalar; 0 where they agree."""
    return (p * (torch.log(p.clamp_min(1e-8)) - F.log_softmax(logits, dim=1))).sum(dim=1).mean()


def mask_inputs(x: torch.Tensor, fraction: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, d) with a random ``fraction`` of the entries zeroed (as ``SparseAutoencoder.corrupt`` does)."""
    if fraction <= 0:
        return x
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) >= fraction
    return x * keep


def consistency_loss(classify: Classify, x: torch.Tensor, p: torch.Tensor, fraction: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """KL(p || prediction on ``x`` (batch, d) with ``fraction`` of it masked): scalar, 0 without masking."""
    return kl_to(p, classify(mask_inputs(x, fraction, generator)))


def unit_rows(d: torch.Tensor) -> torch.Tensor:
    """(batch, d) with every row scaled to L2 norm 1 (a zero row stays zero)."""
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))


def adversarial_direction(classify: Classify, x: torch.Tensor, p: torch.Tensor,
                          generator: torch.Generator | None = None, xi: float = VAT_XI) -> torch.Tensor:
    """Unit rows (batch, d) along which KL(p || prediction on x + r) grows fastest for small r: one power
    iteration on the KL's curvature, from a random direction (the gradient at a step of norm ``xi``)."""
    d = xi * unit_rows(torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device))
    d.requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_to(p, classify(x.detach() + d)), d)
    return unit_rows(grad.detach())


def vat_loss(classify: Classify, x: torch.Tensor, p: torch.Tensor, radius: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """KL(p || prediction on x + radius * adversarial direction): scalar; gradients reach the classifier only."""
    r = radius * adversarial_direction(classify, x, p, generator)
    return kl_to(p, classify(x + r))
