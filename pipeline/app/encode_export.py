"""``sae-pipeline export`` and ``encode``: every check that needs no model first (output suffix, input file,
model path, the output target), then the model, then the output written beside and renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.app.outputs import check_target, replaced_whole, resolved
from pipeline.data.paths import OUTPUT_SUFFIXES, SUPPORTED_SUFFIXES
from pipeline.errors import InputError

REMOTE = ("models:/", "runs:/")


def export_command(model_uri: str, fmt: str, out: Path, force: bool) -> str:
    """Export ``model_uri`` as ``fmt`` to ``out``, checked against torch before it replaces anything."""
    local = _model_path(model_uri)
    check_target(out, force=force, folder=fmt == "safetensors", inputs=[local] if local else [])
    _check_model(model_uri, local)
    import numpy as np

    from pipeline.serving.export import check_export, export_encoder
    from pipeline.tracking.encoders import resolve_encoder

    encoder = resolve_encoder(model_uri)
    sample = np.random.default_rng(0).normal(size=(16, encoder.d_in)).astype(np.float32)
    with replaced_whole(out) as partial:
        export_encoder(encoder, fmt, partial)  # type: ignore[arg-type]
        diff = check_export(encoder, partial, fmt, sample)  # type: ignore[arg-type]
    return f"exported {model_uri} as {fmt} to {out} (max abs difference vs torch: {diff:.2e})"


def encode_command(model_uri: str, input_path: Path, out: Path, force: bool) -> str:
    """Encode ``input_path`` with ``model_uri`` into ``out`` (.npy or .parquet)."""
    check_input(input_path)
    local = _model_path(model_uri)
    check_target(out, force=force, inputs=[input_path, *([local] if local else [])])
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"--out {out}: unsupported output type {suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(OUTPUT_SUFFIXES)}")
    _check_model(model_uri, local)
    from pipeline.tracking.encoders import encode_file

    with replaced_whole(out) as partial:
        encode_file(model_uri, input_path, partial)
    return f"wrote codes to {out}"


def check_input(path: Path) -> None:
    """InputError unless ``path`` is an existing file of a readable type (nothing is read yet)."""
    where = resolved(path, "input")
    if where.is_dir():
        raise InputError(f"input {path}: is a directory; give one {'/'.join(SUPPORTED_SUFFIXES)} file")
    if not where.is_file():
        raise InputError(f"input {path}: no such file ({where}); check the path")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"input {path}: unsupported file type {path.suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if not os.access(where, os.R_OK):
        raise InputError(f"input {path}: cannot be read (permissions); make it readable")


def _model_path(model_uri: str) -> Path | None:
    """The local folder a model URI names (None for a models:/ or runs:/ URI); InputError when it is missing."""
    if model_uri.startswith(REMOTE) or "://" in model_uri:
        return None
    path = Path(model_uri)
    if not resolved(path, "model").is_dir():
        raise InputError(f"{model_uri}: no such directory; pass an encoder folder or a models:/ or runs:/ URI")
    return path


def _check_model(model_uri: str, local: Path | None) -> None:
    """Before torch and MLflow are imported: a local folder's config.json, or for a models:/ or runs:/ URI the
    tracking store (its server probed) and what it holds; no download progress bars."""
    from pipeline.serving.encoder_folder import check_encoder_folder
    from pipeline.tracking.model_uris import check_model_uri
    from pipeline.tracking.store_checks import check_tracking_store

    if local is not None:
        check_encoder_folder(local, model_uri)
    elif model_uri.startswith(REMOTE):
        check_model_uri(model_uri, check_tracking_store())
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
