"""Configuration of one sparse autoencoder layer, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Sparsity = Literal["kl", "l1", "topk", "none"]
EncoderActivation = Literal["sigmoid", "relu", "tanh"]
DecoderActivation = Literal["sigmoid", "linear"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "sparsity": ("kl", "l1", "topk", "none"),
    "encoder_activation": ("sigmoid", "relu", "tanh"),
    "decoder_activation": ("sigmoid", "linear"),
}


@dataclass(frozen=True)
class SAEConfig:
    """One layer: shapes, sparsity penalty and regularisation."""

    d_in: int
    """Number of input features."""
    d_hidden: int
    """Number of hidden units (the code size)."""
    sparsity: Sparsity = "kl"
    """kl: beta * sum_j KL(target || rho_hat_j); l1: beta * mean_batch sum_j |code_j|;
    topk: keep the k largest pre-activations per row; none: no sparsity term."""
    target: float = 0.1
    """Target mean activation rho for kl, strictly inside (0, 1)."""
    beta: float = 3.0
    """Weight of the sparsity term (kl and l1)."""
    k: int | None = None
    """Active units per sample for topk, 1 <= k <= d_hidden."""
    weight_decay: float = 0.003
    """lambda in lambda/2 * sum of squared weights (weights only, not biases)."""
    encoder_activation: EncoderActivation = "sigmoid"
    """Hidden-unit nonlinearity; kl needs sigmoid (activations in (0, 1))."""
    decoder_activation: DecoderActivation = "sigmoid"
    """Output nonlinearity; sigmoid needs inputs in [0, 1]."""
    tied: bool = False
    """Decoder weight is the encoder weight transposed (the decoder keeps its own bias)."""
    noise: float = 0.0
    """Denoising: fraction of inputs zeroed during training, 0 <= noise < 1."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SAEConfig.{name}={value!r}: must be a positive integer")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"SAEConfig.{name}={getattr(self, name)!r}: unknown value; choose one of {', '.join(choices)}"
                )
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"SAEConfig.target={self.target!r}: must be strictly between 0 and 1")
        if self.beta < 0:
            raise ValueError(f"SAEConfig.beta={self.beta!r}: must be >= 0")
        if self.weight_decay < 0:
            raise ValueError(f"SAEConfig.weight_decay={self.weight_decay!r}: must be >= 0")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"SAEConfig.noise={self.noise!r}: must satisfy 0 <= noise < 1")
        if self.sparsity == "topk" and (
            self.k is None or isinstance(self.k, bool) or not 1 <= self.k <= self.d_hidden
        ):
            raise ValueError(
                f"SAEConfig.k={self.k!r}: topk needs an integer k with 1 <= k <= d_hidden ({self.d_hidden})"
            )
        if self.sparsity == "kl" and self.encoder_activation != "sigmoid":
            raise ValueError(
                f"SAEConfig.encoder_activation={self.encoder_activation!r}: the kl penalty needs activations "
                "in (0, 1); use encoder_activation='sigmoid', or sparsity='l1'/'topk' with relu or tanh"
            )

    @property
    def active_threshold(self) -> float:
        """A code counts as active above this value: 0.5 * target for sigmoid and tanh (on |code|), 0 for relu/topk."""
        if self.sparsity == "topk" or self.encoder_activation == "relu":
            return 0.0
        return 0.5 * self.target

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SAEConfig: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)
