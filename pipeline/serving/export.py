"""Export a StackedEncoder as ONNX, TorchScript or safetensors, load it back, and check it against torch."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from sae.stack import StackedEncoder

ExportFormat = Literal["onnx", "torchscript", "safetensors"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
INPUT_NAME = "features"
OUTPUT_NAME = "codes"
OPSET = 17
TOLERANCE = 1e-5  # max abs difference allowed between an export and the eager module
CHUNK_ROWS = 8192

Encode = Callable[[np.ndarray], np.ndarray]


def export_encoder(encoder: StackedEncoder, fmt: ExportFormat, out: Path) -> Path:
    """Write ``encoder`` in ``fmt`` to ``out`` (a file for onnx/torchscript, a directory for safetensors)."""
    out = Path(out)
    match fmt:
        case "safetensors":
            return encoder.save(out)
        case "onnx" | "torchscript":
            out.parent.mkdir(parents=True, exist_ok=True)
            module, example = _cpu_copy(encoder), _example(encoder.d_in)
            # The torch.export-based ONNX exporter needs onnxscript; the TorchScript one (dynamo=False)
            # handles this small graph. Both torch.jit and the legacy exporter warn that they are deprecated.
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                if fmt == "onnx":
                    torch.onnx.export(
                        module,
                        (example,),
                        str(out),
                        dynamo=False,
                        input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                        opset_version=OPSET,
                    )
                else:
                    torch.jit.save(torch.jit.trace(module, example), str(out))
            return out
        case _:
            raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def load_exported(path: Path, fmt: ExportFormat | None = None) -> Encode:
    """A function (n, d_in) raw features -> (n, d_out) float32 codes, from files written by export_encoder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory; pass what export_encoder wrote")
    fmt = fmt or _guess_format(path)
    match fmt:
        case "safetensors":
            return StackedEncoder.load(path).transform
        case "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit
                module = torch.jit.load(str(path), map_location="cpu")
            module.eval()

            def run_torchscript(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return module(torch.from_numpy(x)).numpy()

            return _chunked(run_torchscript, int(module.scaler.shift.shape[0]))
        case "onnx":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            d_in = session.get_inputs()[0].shape[1]

            def run_onnx(x: np.ndarray) -> np.ndarray:
                return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]

            return _chunked(run_onnx, d_in if isinstance(d_in, int) else None)
        case _:
            raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_export(encoder: StackedEncoder, path: Path, fmt: ExportFormat, X_sample: np.ndarray) -> float:
    """Max abs difference of the export from ``encoder`` on ``X_sample``; RuntimeError above TOLERANCE."""
    X_sample = np.asarray(X_sample, dtype=np.float32)
    expected = encoder.transform(X_sample)
    got = np.asarray(load_exported(path, fmt)(X_sample))
    if got.shape != expected.shape:
        raise RuntimeError(
            f"{path}: the {fmt} export returns shape {got.shape}, torch returns {expected.shape}"
        )
    diff = float(np.max(np.abs(got - expected))) if expected.size else 0.0
    if not diff <= TOLERANCE:
        raise RuntimeError(
            f"{path}: the {fmt} export differs from torch by up to {diff:.3g} (tolerance {TOLERANCE:g}); "
            "do not use this export"
        )
    return diff


def _cpu_copy(encoder: StackedEncoder) -> StackedEncoder:
    """A CPU, eval-mode copy to trace, so exporting never moves or mutates the caller's module."""
    module = copy.deepcopy(encoder).cpu().eval()
    module.requires_grad_(False)
    return module


def _example(d_in: int) -> torch.Tensor:
    """A small fixed input for tracing; values only matter for the tracer's self-check."""
    return torch.from_numpy(np.random.default_rng(0).normal(size=(3, d_in)).astype(np.float32))


def _chunked(run: Encode, d_in: int | None) -> Encode:
    """Wrap ``run`` so it takes any numeric (n, d_in) array and feeds float32 in CHUNK_ROWS-row pieces."""

    def encode(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2 or (d_in is not None and X.shape[1] != d_in):
            raise ValueError(
                f"input has shape {X.shape} but the exported encoder expects (n, {d_in}) features"
            )
        parts = [
            run(np.ascontiguousarray(X[i : i + CHUNK_ROWS], dtype=np.float32))
            for i in range(0, len(X), CHUNK_ROWS)
        ]
        return (
            np.concatenate(parts).astype(np.float32, copy=False) if parts else run(X[:0].astype(np.float32))
        )

    return encode


def _guess_format(path: Path) -> ExportFormat:
    """safetensors for a directory, onnx for ``.onnx``, torchscript for a zip (what torch.jit.save writes)."""
    if path.is_dir():
        return "safetensors"
    if path.suffix == ".onnx":
        return "onnx"
    with path.open("rb") as f:
        if f.read(2) == b"PK":
            return "torchscript"
    raise ValueError(
        f"{path}: cannot tell the export format from the file; pass fmt= one of {', '.join(FORMATS)}"
    )


__all__ = ["ExportFormat", "FORMATS", "TOLERANCE", "check_export", "export_encoder", "load_exported"]
