"""Find a trained encoder by URI and encode data files with it, in chunks.

``resolve_encoder`` accepts ``models:/name@alias``, ``models:/name/version``, ``models:/<model id>``,
``runs:/<run id>/<model name>`` and local directories (``StackedEncoder.save`` output or a downloaded MLflow
model). Remote models are downloaded as files and rebuilt from safetensors + JSON; nothing is unpickled.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError

from pipeline.data.codes import CHUNK_ROWS, encode_in_chunks
from pipeline.data.paths import OUTPUT_SUFFIXES
from pipeline.data.readers import read_array_file
from pipeline.errors import InputError
from pipeline.serving.encoder_folder import check_encoder_folder
from pipeline.tracking.pyfunc import weights_dir
from pipeline.tracking.store import registry_uri, use_tracking_uri
from pipeline.tracking.uris import resolve_tracking_uri
from sae.files import CONFIG_FILE, WEIGHTS_FILE
from sae.stack import StackedEncoder


def load_local(directory: Path, uri: str | None = None) -> StackedEncoder:
    """A StackedEncoder from a ``save`` directory or an MLflow pyfunc model directory written by this project."""
    where = uri or str(directory)
    if not ((directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()):
        weights = weights_dir(directory)
        if weights is None:
            raise InputError(f"{where}: neither an encoder folder ({CONFIG_FILE} + {WEIGHTS_FILE}) nor an MLflow "
                             "model logged by sae-pipeline; pass a models:/ or runs:/ URI or an exported folder")
        directory = weights
    check_encoder_folder(directory, where)
    try:
        return StackedEncoder.load(directory)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{where}: the encoder files are damaged or not an sae-pipeline encoder ({first}); "
                         "export it again or fetch it from the registry") from None


def resolve_encoder(uri: str | Path, tracking_uri: str | None = None) -> StackedEncoder:
    """Load a StackedEncoder from a local directory or an MLflow URI (models:/..., runs:/...)."""
    text = str(uri)
    scheme = urlparse(text).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a one-letter scheme is a Windows drive)
        local = Path(unquote(urlparse(text).path)) if scheme == "file" else Path(text)
        if not local.exists():
            raise InputError(f"{text}: no such directory; pass an encoder folder or a models:/ or runs:/ URI")
        return load_local(local)
    tracking = resolve_tracking_uri(tracking_uri)
    # use_tracking_uri: MLflow resolves runs:/<id>/<model name> through a client on the global URI.
    with tempfile.TemporaryDirectory(prefix="sae-model-") as tmp, use_tracking_uri(tracking):
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp, tracking_uri=tracking,
                                                       registry_uri=registry_uri(tracking))
        except MlflowException as error:
            raise InputError(f"{text}: cannot fetch it from {tracking} ({error.message.splitlines()[0]}); check "
                             "the name, version or alias (e.g. models:/digits-encoder@champion)") from None
        return load_local(Path(path), text)


def read_features(input_path: Path, encoder: StackedEncoder) -> np.ndarray:
    """The file's features in the encoder's column order: a table's columns are picked and ordered by the names the
    encoder was trained on; files without names (.npy, .npz) and encoders without them go by position."""
    X, _, names = read_array_file(input_path)
    wanted = list(encoder.meta.get("feature_names") or [])
    named = input_path.suffix.lower() in (".csv", ".parquet") and len(wanted) == encoder.d_in
    if named and names != wanted and not _positional(wanted):
        missing = [name for name in wanted if name not in names]
        if missing:
            raise InputError(f"{input_path}: lacks column(s) {', '.join(map(repr, missing[:5]))}"
                             f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} that the encoder was "
                             "trained on; pass a table with the training columns (their order does not matter)")
        X, _, _ = read_array_file(input_path, features=wanted)
    if X.shape[1] != encoder.d_in:
        raise InputError(f"{input_path}: has {X.shape[1]} features but the encoder expects {encoder.d_in}; "
                         "pass the same columns the encoder was trained on")
    return X


def _positional(names: list[str]) -> bool:
    """True for the names the readers give unnamed columns (x0, x1, ...): they say nothing about a table's."""
    return names == [f"x{i}" for i in range(len(names))]


def encode_file(
    model: str | Path | StackedEncoder,
    input_path: str | Path,
    out_path: str | Path,
    *,
    chunk_rows: int = CHUNK_ROWS,
    tracking_uri: str | None = None,
) -> Path:
    """Encode ``input_path`` (.npy/.npz/.csv/.parquet) with ``model`` into ``out_path`` (.npy or .parquet)."""
    input_path, out_path = Path(input_path), Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(f"{out_path}: unsupported output type {suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(OUTPUT_SUFFIXES)}")
    encoder = model if isinstance(model, StackedEncoder) else resolve_encoder(model, tracking_uri)
    encoder.eval()
    X = read_features(input_path, encoder)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        encode_in_chunks(encoder, X, encoder.d_out, out_path=out_path, chunk_rows=chunk_rows)
    else:
        write_parquet(encoder, X, out_path, chunk_rows)
    return out_path


def write_parquet(encoder: StackedEncoder, X: np.ndarray, out_path: Path, chunk_rows: int) -> None:
    """Codes as float32 columns ``sae0``, ``sae1``, ... written one row group per chunk."""
    names = [f"sae{i}" for i in range(encoder.d_out)]
    schema = pa.schema([(name, pa.float32()) for name in names])
    with pq.ParquetWriter(out_path, schema) as writer:
        for start in range(0, X.shape[0], chunk_rows):
            codes = encoder.transform(X[start : start + chunk_rows], batch_size=chunk_rows)
            writer.write_table(pa.Table.from_arrays(list(np.ascontiguousarray(codes.T)), schema=schema))
        if X.shape[0] == 0:
            writer.write_table(schema.empty_table())
