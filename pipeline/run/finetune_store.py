"""Fine-tuning results on disk, keyed by everything that determines them; no Prefect involved.

A re-run whose layers all come from the layer cache would otherwise spend most of its time fine-tuning the
very same stack again. An entry ``<cache_dir>/finetune/<key>/`` holds the kept encoder and softmax
(``encoder.safetensors``, ``head.safetensors``), the class labels (``classes.npy``) and everything else of the
``FinetuneResult`` (``result.json``: accuracies, kept epoch, per-epoch history, the epochs the logger got), and
is written and checked as ``pipeline.run.entries`` says. The key covers the stack (its top layer's cache key and
the encoder's weights), the data's features and labels, every fine-tuning setting, the seed and where it runs;
a reused result replays its epochs to the hooks, so the run records what a fresh one records.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.run import entries
from pipeline.run.device import Device
from pipeline.run.finetune import FinetuneResult
from pipeline.run.greedy import finetune_if_labelled
from sae.stack import StackedEncoder

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData, Splits
    from pipeline.run.hooks import PipelineHooks

VERSION = 1  # bump when the layout or the fine-tuning code changes what a key means
RESULT_FILE, ENCODER_FILE, HEAD_FILE = "result.json", "encoder.safetensors", "head.safetensors"
CLASSES_FILE = "classes.npy"
FILES = (RESULT_FILE, ENCODER_FILE, HEAD_FILE, CLASSES_FILE)
NOT_IN_JSON = {"encoder", "head", "classes", "reused"}  # stored as tensors or arrays, or not stored

log = logging.getLogger(__name__)


def finetune_dir(cache_dir: str | Path, key: str) -> Path:
    """``<cache_dir>/finetune/<key>``."""
    return Path(cache_dir) / "finetune" / key


def finetune_key(config: PipelineConfig, data: LoadedData, encoder: StackedEncoder, top_key: str) -> str:
    """sha256 of what fine-tuning ``encoder`` on ``data`` under ``config`` depends on: the stack (``top_key``,
    the top layer's cache key, and the encoder's tensors and layer configs), the data's features (their
    fingerprint) and labels (the arrays: a view that swaps labels keeps the data's fingerprint), the
    fine-tuning settings, the seed, and the device and precision it runs at."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for labels in (data.y_train, data.y_val, data.y_test):
        array = np.ascontiguousarray(np.asarray(labels if labels is not None else []))
        assert array.dtype != object, "labels are ints or strings (pipeline.data.labels)"
        digest.update(f"labels|{array.dtype.str}|{array.shape}".encode() + array.tobytes())
    device = Device.of(config.trainer.model_dump())
    payload = {"version": VERSION, "stack": top_key, "encoder": digest.hexdigest(),
               "configs": [c.to_dict() for c in encoder.configs], "features": data.features_fingerprint,
               "settings": config.finetune.model_dump(mode="json"), "seed": int(config.seed),
               "device": device.torch.type, "precision": device.precision}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save(directory: Path, result: FinetuneResult) -> None:
    """Write ``result`` into ``directory`` (the files of ``FILES``)."""
    for module, name in ((result.encoder, ENCODER_FILE), (result.head, HEAD_FILE)):
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(directory / name))
    np.save(directory / CLASSES_FILE, np.asarray(result.classes), allow_pickle=False)
    values = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in NOT_IN_JSON}
    (directory / RESULT_FILE).write_text(json.dumps(values, indent=1))


def load(directory: Path, pretrained: StackedEncoder) -> FinetuneResult:
    """The FinetuneResult stored in ``directory``: ``pretrained``'s structure with the stored weights."""
    started = time.perf_counter()
    values = json.loads((directory / RESULT_FILE).read_text())
    encoder = copy.deepcopy(pretrained)
    encoder.load_state_dict(load_file(str(directory / ENCODER_FILE)))
    head_state = load_file(str(directory / HEAD_FILE))
    head = torch.nn.Linear(*reversed(head_state["weight"].shape))
    head.load_state_dict(head_state)
    classes = np.load(directory / CLASSES_FILE, allow_pickle=False)
    values["seconds"] = time.perf_counter() - started
    return FinetuneResult(encoder=encoder.eval(), head=head, classes=classes, reused=True, **values)


def _reuse(directory: Path, encoder: StackedEncoder, logger: logging.Logger | logging.LoggerAdapter[Any]
           ) -> FinetuneResult | None:
    """The sound entry in ``directory``, loaded; None (saying why, when there is an entry) if there is none."""
    problem = entries.check_entry(directory, FILES)
    if problem is not None:
        if directory.exists():
            logger.warning("fine-tuning cache entry %s is damaged (%s): fine-tuning again", directory, problem)
        return None
    try:
        return load(directory, encoder)
    except Exception as error:  # noqa: BLE001 - checksums passed, yet the files do not load: fine-tune again
        logger.warning("fine-tuning cache entry %s does not load (%s: %s): fine-tuning again", directory,
                       type(error).__name__, error)
        return None


def finetune_cached(config: PipelineConfig, data: LoadedData, encoder: StackedEncoder, hooks: PipelineHooks,
                    top_codes: Splits | None, *, top_key: str, refresh: bool = False,
                    logger: logging.Logger | logging.LoggerAdapter[Any] = log) -> FinetuneResult | None:
    """``greedy.finetune_if_labelled``, reusing a sound entry under ``config.cache_dir`` (unless ``refresh``)
    and storing what it trains; a result it cannot store is kept and the run goes on (one warning)."""
    if data.y_train is None or config.finetune.epochs <= 0:
        return None
    key = finetune_key(config, data, encoder, top_key)
    directory = finetune_dir(Path(config.cache_dir).expanduser().resolve(), key)
    reused = None if refresh else _reuse(directory, encoder, logger)
    if reused is not None:
        logger.info("fine-tuning reused from cache %s (%s)", key, directory)
        hooks.on_finetune_end(reused)
        return reused
    result = finetune_if_labelled(config, data, encoder, hooks, top_codes)
    assert result is not None
    try:
        entries.write_entry(directory, lambda partial: save(partial, result), FILES, version=VERSION, replace=True)
    except OSError as error:
        logger.warning("could not store the fine-tuning in the cache (%s: %s); the run goes on with it",
                       type(error).__name__, error)
    else:
        logger.info("fine-tuning stored as %s", key)
    return result

