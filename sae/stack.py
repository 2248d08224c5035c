"""The stacked encoder: fitted input scaling plus the encoder halves of greedily trained layers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sae.batches import row_chunks
from sae.config import SAEConfig
from sae.files import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE, read_config
from sae.model import SparseAutoencoder, encode_with
from sae.scaling import InputScaler, Scaling


class StackedEncoder(nn.Module):
    """Raw features (batch, d_in) -> scaled -> layer 1 codes -> rescaled -> layer 2 codes -> ... (batch, d_out).

    ``code_scalings[k]`` is the affine map fitted on layer k+1's training codes that layer k+2 was trained on
    (None = identity); carrying it here keeps exported and served encoders equal to the trained stack.
    """

    def __init__(
        self,
        scaling: Scaling,
        layers: Sequence[tuple[SAEConfig, nn.Linear]] | None = None,
        meta: dict[str, Any] | None = None,
        code_scalings: Sequence[Scaling | None] | None = None,
    ) -> None:
        super().__init__()
        self.scaler = InputScaler(scaling)
        self.encoders = nn.ModuleList()
        self.code_scalers = nn.ModuleList()
        self.configs: list[SAEConfig] = []
        self.meta: dict[str, Any] = dict(meta or {})
        d_prev = scaling.d_in
        for i, (config, linear) in enumerate(layers or (), start=1):
            if config.d_in != d_prev:
                raise ValueError(
                    f"layer {i} has d_in={config.d_in} but receives {d_prev} features from "
                    f"{'the input' if i == 1 else f'layer {i - 1}'}; stack layers whose sizes chain"
                )
            if tuple(linear.weight.shape) != (config.d_hidden, config.d_in) or linear.bias is None:
                raise ValueError(
                    f"layer {i}: encoder weight has shape {tuple(linear.weight.shape)} (bias "
                    f"{'missing' if linear.bias is None else 'present'}) but its config needs "
                    f"({config.d_hidden}, {config.d_in}) with a bias"
                )
            copy = nn.Linear(config.d_in, config.d_hidden)
            with torch.no_grad():
                copy.weight.copy_(linear.weight.detach().float())
                copy.bias.copy_(linear.bias.detach().float())
            self.encoders.append(copy)
            self.configs.append(config)
            d_prev = config.d_hidden
        between = list(code_scalings) if code_scalings is not None else [None] * max(len(self.configs) - 1, 0)
        if len(between) != max(len(self.configs) - 1, 0):
            raise ValueError(
                f"{len(between)} code scalings for {len(self.configs)} layers: give one per pair of adjacent "
                "layers (None for identity)"
            )
        for config, code_scaling in zip(self.configs, between, strict=False):
            code_scaling = code_scaling or Scaling.identity(config.d_hidden)
            if code_scaling.d_in != config.d_hidden:
                raise ValueError(
                    f"a code scaling over {code_scaling.d_in} features follows a layer of {config.d_hidden} "
                    "units; fit it on that layer's codes"
                )
            self.code_scalers.append(InputScaler(code_scaling))

    @classmethod
    def from_autoencoders(
        cls,
        scaling: Scaling,
        autoencoders: Sequence[SparseAutoencoder],
        meta: dict[str, Any] | None = None,
        code_scalings: Sequence[Scaling | None] | None = None,
    ) -> StackedEncoder:
        """Stack the encoder halves of trained layers, bottom first (weights are copied)."""
        return cls(scaling, [(ae.config, ae.encoder) for ae in autoencoders], meta, code_scalings)

    @property
    def depth(self) -> int:
        """Number of encoder layers."""
        return len(self.configs)

    @property
    def d_in(self) -> int:
        """Number of raw input features."""
        return int(self.scaler.shift.shape[0])

    @property
    def d_out(self) -> int:
        """Size of the top layer's codes (d_in when there are no layers)."""
        return self.configs[-1].d_hidden if self.configs else self.d_in

    @property
    def scaling(self) -> Scaling:
        """The numpy description of the input scaling."""
        return self.scaler.to_scaling()

    @property
    def code_scalings(self) -> list[Scaling]:
        """The numpy descriptions of the scalings between layers (one per pair of adjacent layers)."""
        return [scaler.to_scaling() for scaler in self.code_scalers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) raw features -> (batch, d_out) top-layer codes."""
        return self.encode(x)

    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """(batch, d_in) raw features -> (batch, d_hidden of layer ``depth``) codes; depth is 1-based."""
        return self.encode_scaled(self.scaler(x), depth)

    def encode_scaled(self, h: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """(batch, d_in) features already through ``scaler`` -> codes of layer ``depth``: where fine-tuning
        perturbs or masks the inputs (in the space layer 1 was trained in, whatever the raw units)."""
        depth = self._check_depth(depth) if self.configs else 0
        for i in range(depth):
            if i:
                h = self.code_scalers[i - 1](h)
            h = encode_with(self.encoders[i], h, self.configs[i])
        return h

    def transform(self, X: np.ndarray, batch_size: int = 8192, depth: int | None = None) -> np.ndarray:
        """(n, d_in) raw features -> (n, d_out) float32 codes of layer ``depth``, in ``batch_size`` chunks."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.d_in:
            got = f"{X.shape[1]} features" if X.ndim == 2 else f"shape {X.shape}"
            raise ValueError(
                f"input has {got} but the encoder expects {self.d_in} features: pass a (n, {self.d_in}) array "
                "with the columns the encoder was trained on"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
        if depth is None:
            run, width = self.forward, self.d_out
        else:
            depth = self._check_depth(depth)
            run, width = (lambda x: self.encode(x, depth)), self.configs[depth - 1].d_hidden
        out = np.empty((X.shape[0], width), dtype=np.float32)
        device = self.scaler.shift.device
        with torch.no_grad():
            for start, chunk in row_chunks(X, batch_size):
                out[start : start + chunk.shape[0]] = run(torch.from_numpy(chunk).to(device)).cpu().numpy()
        return out

    def _check_depth(self, depth: int | None) -> int:
        """``depth`` (None = top) as a valid 1-based layer number, or a ValueError naming the range."""
        depth = self.depth if depth is None else depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.depth:
            valid = f"1..{self.depth}" if self.depth else "none (the encoder has no layers)"
            raise ValueError(f"depth={depth!r} is out of range; valid depths are {valid}")
        return depth

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created); returns it."""
        directory = Path(directory)
        scaling = self.scaling
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scaling": {"kind": scaling.kind, "offset": scaling.offset, "clip": scaling.clip},
            "layers": [c.to_dict() for c in self.configs],
            "code_scalings": [{"kind": c.kind, "offset": c.offset, "clip": c.clip} for c in self.code_scalings],
            "meta": self.meta,
        }
        try:
            text = json.dumps(config, indent=2)
        except TypeError as err:
            raise ValueError(
                f"StackedEncoder.meta is not JSON-serialisable ({err}): keep it to plain values"
            ) from err
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().float().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        (directory / CONFIG_FILE).write_text(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> StackedEncoder:
        """Rebuild from a directory written by :meth:`save` (JSON + safetensors only, no pickle)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{directory}: no such directory; pass the folder written by StackedEncoder.save"
            )
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory / name}: file missing; the folder needs {CONFIG_FILE} and {WEIGHTS_FILE}"
                )
        config = read_config(directory)  # not JSON, another format, a NaN offset: a ValueError naming it
        tensors = load_file(str(directory / WEIGHTS_FILE))
        _check_finite(directory, tensors)
        for key in ("scaler.shift", "scaler.factor"):
            if key not in tensors:
                raise ValueError(
                    f"{directory / WEIGHTS_FILE}: tensor {key!r} missing; the file is not a stacked encoder"
                )
        s = config["scaling"]
        scaling = Scaling(
            s["kind"],
            tensors["scaler.shift"].numpy(),
            tensors["scaler.factor"].numpy(),
            float(s["offset"]),
            bool(s["clip"]),
        )
        configs = [SAEConfig.from_dict(c) for c in config["layers"]]
        entries = config.get("code_scalings")
        if entries is None:  # version 1 predates code scalings: every one is the identity
            entries = [_IDENTITY] * max(len(configs) - 1, 0)
            tensors |= {f"code_scalers.{i}.{key}": fill(configs[i].d_hidden)
                        for i in range(len(entries)) for key, fill in (("shift", torch.zeros), ("factor", torch.ones))}
        code_scalings = [
            Scaling(entry["kind"], _array(tensors, f"code_scalers.{i}.shift", directory),
                    _array(tensors, f"code_scalers.{i}.factor", directory), float(entry["offset"]), bool(entry["clip"]))
            for i, entry in enumerate(entries)
        ]
        encoder = cls(
            scaling, [(c, nn.Linear(c.d_in, c.d_hidden)) for c in configs], config.get("meta") or {}, code_scalings
        )
        try:
            encoder.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"{directory / WEIGHTS_FILE}: weights do not match {CONFIG_FILE} ({err})"
            ) from err
        return encoder


_IDENTITY = {"kind": "none", "offset": 0.0, "clip": False}


def _check_finite(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """ValueError naming the first tensor holding NaN or infinite values: a damaged encoder would otherwise turn
    every input into NaN codes without a word (config.json's offsets: ``read_config``)."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{directory / WEIGHTS_FILE}: tensor {key!r} holds NaN or infinite values; the encoder "
                             "is damaged")


def _array(tensors: dict[str, torch.Tensor], key: str, directory: Path) -> np.ndarray:
    """Tensor ``key`` of a saved encoder as numpy, or a ValueError naming the file."""
    if key not in tensors:
        raise ValueError(f"{directory / WEIGHTS_FILE}: tensor {key!r} missing; the file is not a stacked encoder")
    return tensors[key].numpy()


__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "InputScaler", "Scaling", "StackedEncoder"]
