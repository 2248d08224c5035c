"""Configuration of one sparse autoencoder layer, validated on construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
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

    d_in: int = field(metadata={"ge": 1})
    """Number of input features."""
    d_hidden: int = field(metadata={"ge": 1})
    """Number of hidden units (the code size)."""
    sparsity: Sparsity = "kl"
    """kl: beta * sum_j KL(target || rho_hat_j); l1: beta * mean_batch sum_j |code_j|;
    topk: keep the k largest pre-activations per row; none: no sparsity term."""
    target: float = field(default=0.1, metadata={"gt": 0.0, "lt": 1.0})
    """Target mean activation rho for kl, strictly inside (0, 1)."""
    beta: float = field(default=3.0, metadata={"ge": 0.0})
    """Weight of the sparsity term (kl and l1)."""
    k: int | None = field(default=None, metadata={"ge": 1})
    """Active units per sample for topk, 1 <= k <= d_hidden."""
    weight_decay: float = field(default=0.003, metadata={"ge": 0.0})
    """lambda in lambda/2 * sum of squared weights (weights only, not biases)."""
    encoder_activation: EncoderActivation = "sigmoid"
    """Hidden-unit nonlinearity; kl needs sigmoid (activations in (0, 1))."""
    decoder_activation: DecoderActivation = "sigmoid"
    """Output nonlinearity; sigmoid needs inputs in [0, 1]."""
    tied: bool = False
    """Decoder weight is the encoder weight transposed (the decoder keeps its own bias)."""
    noise: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0})
    """Denoising: fraction of inputs zeroed during training, 0 <= noise < 1."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _CHOICES and value not in _CHOICES[f.name]:
                raise ValueError(
                    f"SAEConfig.{f.name}={value!r}: unknown value; choose one of {', '.join(_CHOICES[f.name])}"
                )
            if f.metadata and value is not None:
                _check_bounds(f.name, value, f.metadata, integer=f.type.startswith("int"))
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


_BOUNDS = {"gt": (float.__gt__, ">"), "ge": (float.__ge__, ">="), "lt": (float.__lt__, "<"), "le": (float.__le__, "<=")}


def _check_bounds(name: str, value: object, bounds: Mapping[str, float], *, integer: bool) -> None:
    """The field's numeric type and its bounds (from the field metadata, which the pipeline's schema reuses)."""
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise ValueError(f"SAEConfig.{name}={value!r}: must be {'an integer' if integer else 'a number'}")
    for kind, limit in bounds.items():
        test, symbol = _BOUNDS[kind]
        if not test(float(value), float(limit)):
            raise ValueError(f"SAEConfig.{name}={value!r}: must be {symbol} {limit:g}")
