"""Trained layers on disk, keyed by everything that determines their weights; no Prefect involved.

A layer lives in ``<cache_dir>/layers/<key>/``: ``config.json`` (SAEConfig, resolved settings, key, timing,
test metrics), ``model.safetensors`` (weights, plus ``rho_hat`` when measured), ``history.json`` (per-epoch
metrics) and ``train_codes.npy``/``val_codes.npy``/``test_codes.npy`` (its codes, the next layer's inputs). A layer is trained
into a ``<key>.partial-<host>-<pid>`` sibling and renamed into place, so a run killed mid-layer leaves no directory
that looks complete. ``checksums.json`` (sha256 and size of every other file) is written last, atomically:
an entry without it, or whose files do not match it, is not used (``check_entry`` says why) and retrains.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from pipeline.config import ResolvedLayer
from pipeline.data.codes import MEMMAP_BYTES
from pipeline.data.loading import LoadedData, Splits
from pipeline.run import entries
from pipeline.run.results import LayerResult
from sae import SAEConfig, SparseAutoencoder

# Bump when the on-disk layout or the training code changes what a key means. 3: searches before it trained
# upper layers on the codes below without their code_scaling, under the key of the scaled inputs. 4: the
# key covers the splits' features only (labels never reach a layer), so a label change alone keeps it.
CACHE_VERSION = 4
CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE = "config.json", "model.safetensors", "history.json"
CODE_FILES = tuple(f"{split}_codes.npy" for split in Splits._fields)
FILES = (CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, *CODE_FILES)
RHO_HAT = "rho_hat"  # extra tensor in model.safetensors, not part of the state dict


def _sha256(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def input_fingerprint(data: LoadedData) -> str:
    """Hash of what layer 1 sees: every split's features in order (training rows, the unlabeled ones and the
    unlabeled pool included; validation; test: the codes of all three are stored) plus the fitted scaling.
    Labels are left out: no layer reads them; which rows the layers fit on (``pretrain_rows``) is in.
    """
    s = data.scaling
    digest = hashlib.sha256()
    digest.update(data.features_fingerprint.encode())
    if data.pretrain_rows is not None:
        digest.update(b"pretrain_rows:" + np.ascontiguousarray(data.pretrain_rows, np.int64).tobytes())
    digest.update(f"{s.kind}|{float(s.offset)!r}|{bool(s.clip)}".encode())
    digest.update(np.ascontiguousarray(s.shift, np.float32).tobytes())
    digest.update(np.ascontiguousarray(s.factor, np.float32).tobytes())
    return digest.hexdigest()


def layer_cache_key(fingerprint: str, settings: ResolvedLayer, seed: int, parent_key: str | None) -> str:
    """sha256 of the input fingerprint, every resolved setting of the layer, its seed and the key below it."""
    values = settings.model_dump(mode="json")
    return _sha256({"version": CACHE_VERSION, "inputs": fingerprint, "settings": values, "seed": int(seed),
                    "parent": parent_key})


def layer_dir(cache_dir: str | Path, key: str) -> Path:
    """``<cache_dir>/layers/<key>``."""
    return Path(cache_dir) / "layers" / key


def is_complete(directory: Path) -> bool:
    """True when every file of a trained layer is present and matches ``checksums.json``."""
    return check_entry(directory) is None


def check_entry(directory: Path) -> str | None:
    """None for a sound entry, else what is wrong with it (missing, incomplete, truncated or altered file)."""
    return entries.check_entry(directory, FILES)


def train_into(
    directory: Path,
    train: Callable[[Path], LayerResult],
    *,
    seed: int,
    key: str = "",
    parent_key: str | None = None,
    replace: bool = False,
) -> Path:
    """Write the layer ``train(codes_dir)`` trains (``greedy.layer_trainer``) to ``directory`` atomically: it
    trains into a partial sibling, which is renamed into place (``pipeline.run.entries``).

    An existing sound entry (a concurrent run stored the same key first) is kept unless ``replace``; an
    unsound one is always replaced.
    """
    def fill(partial: Path) -> None:
        save_layer(partial, train(partial), key=key, parent_key=parent_key, seed=seed)

    entries.write_entry(directory, fill, FILES, version=CACHE_VERSION, replace=replace)
    return directory


def save_layer(directory: Path, result: LayerResult, *, key: str = "", parent_key: str | None = None,
               seed: int = 0) -> None:
    """Write weights, history and config.json of ``result`` into ``directory`` (the codes are written by encoding)."""
    model = result.model
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    if model.rho_hat is not None:
        tensors[RHO_HAT] = model.rho_hat.detach().cpu().float().contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / HISTORY_FILE).write_text(json.dumps(result.history))
    for name, codes in zip(CODE_FILES, result.codes, strict=True):
        if not (directory / name).is_file():
            np.save(directory / name, np.asarray(codes, np.float32))
    meta = {
        "version": CACHE_VERSION,
        "key": key,
        "parent_key": parent_key,
        "seed": seed,
        "sae_config": model.config.to_dict(),
        "settings": result.settings.model_dump(mode="json"),
        "test_metrics": result.test_metrics,
        "seconds": result.seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def _load_codes(path: Path) -> np.ndarray:
    """Small code arrays in memory (as the plain pipeline keeps them), large ones memory-mapped."""
    large = path.stat().st_size > MEMMAP_BYTES
    return np.load(path, mmap_mode="r" if large else None, allow_pickle=False)


def load_layer(directory: Path, settings: ResolvedLayer, *, reused: bool = False) -> LayerResult:
    """The LayerResult stored in ``directory``; ``settings`` is the caller's resolved layer."""
    started = time.perf_counter()
    meta = json.loads((directory / CONFIG_FILE).read_text())
    model = SparseAutoencoder(SAEConfig.from_dict(meta["sae_config"]))
    tensors = load_file(str(directory / WEIGHTS_FILE))
    rho_hat = tensors.pop(RHO_HAT, None)
    model.load_state_dict(tensors)
    model.rho_hat = rho_hat
    model.history = json.loads((directory / HISTORY_FILE).read_text())
    model.eval()
    codes = Splits(*(_load_codes(directory / name) for name in CODE_FILES))
    metrics = {k: float(v) for k, v in meta["test_metrics"].items()}
    seconds = time.perf_counter() - started if reused else float(meta["seconds"])
    return LayerResult(settings, model, codes, metrics, seconds, reused)

