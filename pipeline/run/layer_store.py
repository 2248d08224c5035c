"""Trained layers on disk, keyed by everything that determines their weights; no Prefect involved.

A layer lives in ``<cache_dir>/layers/<key>/``: ``config.json`` (SAEConfig, resolved settings, key, timing,
test metrics), ``model.safetensors`` (weights, plus ``rho_hat`` when measured), ``history.json`` (per-epoch
metrics) and ``train_codes.npy``/``val_codes.npy``/``test_codes.npy`` (its codes, the next layer's inputs). A layer is trained
into a ``<key>.partial-<host>-<pid>`` sibling and renamed into place, so a run killed mid-layer leaves no directory
that looks complete. ``checksums.json`` (sha256 and size of every other file) is written last, atomically:
an entry without it, or whose files do not match it, is not used (``check_entry`` says why) and retrains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from pipeline.config import ResolvedLayer
from pipeline.data.codes import MEMMAP_BYTES
from pipeline.data.loading import LoadedData, Splits
from pipeline.process.pids import pid_alive
from pipeline.run.results import LayerResult
from sae import SAEConfig, SparseAutoencoder

# Bump when the on-disk layout or the training code changes what a key means. 3: searches before it trained
# upper layers on the codes below without their code_scaling, under the key of the scaled inputs. 4: the
# key covers the splits' features only (labels never reach a layer), so a label change alone keeps it.
CACHE_VERSION = 4
CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE = "config.json", "model.safetensors", "history.json"
CODE_FILES = tuple(f"{split}_codes.npy" for split in Splits._fields)
FILES = (CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, *CODE_FILES)
CHECKSUMS_FILE = "checksums.json"  # written last: its presence and contents vouch for the files above
PARTIAL = ".partial-"  # <key>.partial-<host>-<pid>: a layer being trained
REPLACED = ".replaced-"  # <key>.replaced-<host>-<pid>: an entry being swapped out for a fresh one
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
    if not directory.is_dir():
        return "no such entry"
    try:
        recorded = json.loads((directory / CHECKSUMS_FILE).read_text())["files"]
    except FileNotFoundError:
        return f"{CHECKSUMS_FILE} missing (the entry was never finished)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{CHECKSUMS_FILE} unreadable ({type(error).__name__})"
    for name in FILES:
        path, expected = directory / name, recorded.get(name) if isinstance(recorded, dict) else None
        if not isinstance(expected, dict) or not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != expected.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, {expected.get('bytes')} recorded (truncated or replaced)"
        if file_sha256(path) != expected.get("sha256"):
            return f"{name} does not match its recorded sha256 (altered)"
    return None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(directory: Path) -> None:
    """Record sha256 and size of every file of the entry, atomically (temporary file, then rename)."""
    files = {name: {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size}
             for name in FILES}
    tmp = directory / f".{CHECKSUMS_FILE}.tmp"
    with tmp.open("w") as f:
        json.dump({"version": CACHE_VERSION, "files": files}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CHECKSUMS_FILE)


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
    trains into a partial sibling, which is renamed into place.

    An existing sound entry (a concurrent run stored the same key first) is kept unless ``replace``; an
    unsound one is always replaced.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(directory)
    partial = sibling(directory, PARTIAL)
    shutil.rmtree(partial, ignore_errors=True)  # a dead run that had our pid
    partial.mkdir()
    try:
        result = train(partial)
        save_layer(partial, result, key=key, parent_key=parent_key, seed=seed)
        write_checksums(partial)
        _install(partial, directory, replace)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return directory


def sibling(directory: Path, kind: str, host: str | None = None, pid: int | None = None) -> Path:
    """``<key><kind><host>-<pid>`` beside the entry (``PARTIAL`` or ``REPLACED``); this process by default."""
    return directory.with_name(f"{directory.name}{kind}{host or socket.gethostname()}-{pid or os.getpid()}")


def _install(partial: Path, directory: Path, replace: bool) -> None:
    """Rename ``partial`` to ``directory``, moving an existing entry aside first when it must go."""
    if directory.exists() and (replace or not is_complete(directory)):
        old = sibling(directory, REPLACED)
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # a concurrent run moved it first
            directory.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        partial.rename(directory)
    except OSError:
        if not is_complete(directory):
            raise
        shutil.rmtree(partial)  # a concurrent run stored the same key first; same key, same weights


def _remove_stale_partials(directory: Path) -> None:
    """Delete partial directories of ``directory`` left by killed runs on this host (not live ones)."""
    for kind in (PARTIAL, REPLACED):
        prefix = f"{directory.name}{kind}{socket.gethostname()}-"
        for stale in directory.parent.glob(f"{prefix}*"):
            pid = stale.name.removeprefix(prefix)
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)


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

