"""One sparse autoencoder layer as a plain ``nn.Module`` (no training or logging here)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sae.config import SAEConfig
from sae.penalties import kl_penalty, l1_penalty, topk_mask, weight_decay_penalty


class Objective(NamedTuple):
    """Terms of the training objective for one batch (scalars), plus what produced them."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    sparsity: torch.Tensor
    weight_decay: torch.Tensor
    codes: torch.Tensor  # (batch, d_hidden)
    recon: torch.Tensor  # (batch, d_in)


def activate(pre: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply a named nonlinearity elementwise."""
    match activation:
        case "sigmoid":
            return torch.sigmoid(pre)
        case "relu":
            return torch.relu(pre)
        case "tanh":
            return torch.tanh(pre)
        case "linear":
            return pre
        case _:
            raise ValueError(f"unknown activation {activation!r}; choose sigmoid, relu, tanh or linear")


def encode_with(encoder: nn.Linear, x: torch.Tensor, config: SAEConfig) -> torch.Tensor:
    """The encoder half of a layer: (batch, d_in) -> (batch, d_hidden) codes. Shared with the stacked encoder."""
    pre = encoder(x)
    codes = activate(pre, config.encoder_activation)
    if config.sparsity == "topk":
        assert config.k is not None
        codes = codes * topk_mask(pre, config.k)
    return codes


def _linear_init(linear: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear.reset_parameters`` with its draws taken from ``generator``."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


class SparseAutoencoder(nn.Module):
    """x -> codes = act(W1 x + b1) -> recon = act(W2 codes + b2), trained with a sparsity penalty."""

    def __init__(self, config: SAEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.generator = generator  # initial weights and noise masks; None = torch's global RNG
        self.encoder = nn.Linear(config.d_in, config.d_hidden)
        self.decoder = nn.Linear(config.d_hidden, config.d_in)
        if generator is not None:  # nn.Linear drew its own init from the global RNG: draw it from ours instead,
            for linear in (self.encoder, self.decoder):  # so that a generator seeded s gives the weights and noise
                _linear_init(linear, generator)            # that torch.manual_seed(s) gives
        if config.tied:
            del self.decoder.weight  # the decoder reads encoder.weight.T; only its bias is its own
        self.history: list[dict[str, float]] = []  # per-epoch metrics, filled by train_autoencoder
        self.rho_hat: torch.Tensor | None = None  # (d_hidden,) mean activations of the last training epoch
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights uniform in +-sqrt(6)/sqrt(d_in + d_hidden + 1), biases zero (the classic initialisation)."""
        r = math.sqrt(6.0) / math.sqrt(self.config.d_in + self.config.d_hidden + 1)
        with torch.no_grad():
            for w in self.weights():
                w.uniform_(-r, r, generator=self.generator)
            self.encoder.bias.zero_()
            self.decoder.bias.zero_()

    def weights(self) -> list[torch.Tensor]:
        """The distinct weight matrices (tied weights counted once)."""
        return [self.encoder.weight] if self.config.tied else [self.encoder.weight, self.decoder.weight]

    @property
    def decoder_weight(self) -> torch.Tensor:
        """(d_in, d_hidden) decoder matrix, the encoder's transpose when tied."""
        return self.encoder.weight.t() if self.config.tied else self.decoder.weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) -> (batch, d_hidden) codes."""
        return encode_with(self.encoder, x, self.config)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(batch, d_hidden) -> (batch, d_in) reconstruction."""
        return activate(F.linear(codes, self.decoder_weight, self.decoder.bias), self.config.decoder_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) -> (batch, d_in) reconstruction (no corruption: inference)."""
        return self.decode(self.encode(x))

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Zero a random fraction ``noise`` of the inputs (denoising); identity when noise is 0."""
        if self.config.noise == 0.0:
            return x
        gen = self.generator
        if gen is not None and gen.device == x.device:
            keep = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device) >= self.config.noise
        else:  # no generator, or x on another device than the generator
            keep = torch.rand_like(x) >= self.config.noise
        return x * keep

    def objective(
        self,
        x: torch.Tensor,
        *,
        corrupt: bool | None = None,
        batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
        codes: torch.Tensor | None = None,
    ) -> Objective:
        """Loss terms for a batch (batch, d_in). Corrupts inputs when training with noise > 0 unless told otherwise.

        ``batch_mean`` turns codes (batch, d_hidden) into rho_hat (d_hidden,); by default the mean over this
        batch. Data-parallel training passes the mean over the global batch (all ranks), so the kl term is
        the single-process one. ``codes`` (batch, d_hidden) already computed from clean ``x`` skip the encoder.
        """
        cfg = self.config
        corrupt = self.training if corrupt is None else corrupt
        if codes is None:
            codes = self.encode(self.corrupt(x) if corrupt else x)
        recon = self.decode(codes)
        reconstruction = 0.5 * (recon - x).pow(2).sum(dim=1).mean()
        decay = weight_decay_penalty(self.weights(), cfg.weight_decay)
        match cfg.sparsity:
            case "kl":
                rho_hat = codes.mean(dim=0) if batch_mean is None else batch_mean(codes)
                sparsity = cfg.beta * kl_penalty(rho_hat, cfg.target)
            case "l1":
                sparsity = cfg.beta * l1_penalty(codes)
            case "topk" | "none":
                sparsity = reconstruction.new_zeros(())
            case _:
                raise ValueError(f"unknown sparsity {cfg.sparsity!r}; choose kl, l1, topk or none")
        return Objective(reconstruction + sparsity + decay, reconstruction, sparsity, decay, codes, recon)
