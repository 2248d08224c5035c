"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.evaluation.choosing import VALIDATE_FROM_PER_CLASS, rows_for_choosing
from pipeline.evaluation.cross_validation import fit_probe_cv
from pipeline.evaluation.probes import fit_probe, one_cpu_thread, probe_device, probe_rows
from sae import SparseAutoencoder
from sae.batches import row_chunks
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data.loading import LoadedData, Splits
    from pipeline.run.results import LayerResult

def probe_accuracies(
    data: LoadedData, layers: Sequence[LayerResult], *, seed: int = 0, accelerator: str = "cpu",
    raw: Future[float] | None = None, validate_from_per_class: int = VALIDATE_FROM_PER_CLASS,
) -> dict[str, float]:
    """Probe test accuracy on the scaled inputs (``raw``) and on each layer's codes (``layer_1``, ...).

    Each probe chooses its C as ``pipeline.evaluation.choosing`` says (on the validation split, or by k-fold CV
    over the labeled training rows when labels are few), on the device of the Trainer ``accelerator``
    setting; the codes are the layers' own (``LayerResult.codes``), never recomputed. ``raw`` is the raw probe
    ``raw_probe_ahead`` started for this data, seed and accelerator: taken instead of fitting it again.
    """
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    device = probe_device(accelerator)
    jobs = {**({} if raw is not None else {"raw": data.scaled()}),
            **{f"layer_{layer.index + 1}": layer.codes for layer in layers}}

    def probe(splits: Splits) -> float:
        return probe_test_accuracy(data, splits, seed, device, validate_from_per_class)

    # On CPU each probe runs on one thread (see pipeline.evaluation.probes); with more cores, probes run side by side:
    # their L-BFGS holds the GIL little (two 200-unit probes on MNIST codes: 0.45 s on two threads, 0.64 s in turn).
    workers = min(len(jobs), torch.get_num_threads()) if device.type == "cpu" else 1
    if workers <= 1:
        out = {name: probe(splits) for name, splits in jobs.items()}
    else:
        with one_cpu_thread(device), ThreadPoolExecutor(workers, thread_name_prefix="sae-probe") as pool:
            out = dict(zip(jobs, pool.map(probe, jobs.values()), strict=True))
    return {"raw": raw.result(), **out} if raw is not None else out


def probe_test_accuracy(data: LoadedData, splits: Splits, seed: int, device: torch.device,
           validate_from_per_class: int = VALIDATE_FROM_PER_CLASS) -> float:
    """Test accuracy of the probe fitted on ``splits`` (features aligned with ``data``'s rows): the labeled
    training rows (at most PROBE_MAX_TRAIN, seeded) fit it; its C is chosen as ``pipeline.evaluation.choosing``
    says (by the labeled validation rows, or by k-fold CV over the labeled rows when labels are few)."""
    assert data.y_train is not None and data.y_val is not None
    rows = rows_for_choosing(splits.train, data.y_train, splits.val, data.y_val, validate_from_per_class)
    pick = probe_rows(len(rows.labeled), seed)
    train, y_train = np.asarray(rows.train[rows.labeled[pick]], np.float32), np.asarray(rows.y)[pick]
    test, y_test = np.asarray(splits.test), np.asarray(data.y_test)
    if rows.validated:
        return fit_probe(train, y_train, np.asarray(rows.val), np.asarray(rows.y_val), test, y_test,
                         device=device).test_accuracy
    every = np.asarray(rows.train[probe_rows(rows.train.shape[0], seed)], np.float32)  # no labels needed
    return fit_probe_cv(train, y_train, test, y_test, scale_rows=every, seed=seed, device=device).test_accuracy


@contextmanager
def raw_probe_ahead(data: LoadedData, *, seed: int = 0, accelerator: str = "cpu",
                    validate_from_per_class: int = VALIDATE_FROM_PER_CLASS) -> Iterator[Future[float] | None]:
    """Fit the raw-input probe of labelled ``data`` on a thread now, and yield its future (None for unlabelled
    data): it needs the data alone, so the CLI starts it while Prefect starts its temporary server (seconds
    with a core idle) and hands it to ``probe_accuracies(raw=...)``. Leaving the block drops it."""
    if data.y_train is None or data.y_val is None or data.y_test is None:
        yield None
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="sae-raw-probe")
    try:
        yield pool.submit(probe_test_accuracy, data, data.scaled(), seed, probe_device(accelerator),
                          validate_from_per_class)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def layer_test_metrics(
    model: SparseAutoencoder, inputs: np.ndarray, codes: np.ndarray | None = None, chunk_rows: int = 8192
) -> dict[str, float]:
    """A trained layer's objective terms, mse, fvu, rho_hat, L0 and dead fraction on held-out inputs.

    ``codes`` are the layer's codes of ``inputs`` when already computed: only the decoder then runs.
    """
    stats = EpochStats(model.config)
    model.eval()
    code_chunks = None if codes is None else row_chunks(codes, chunk_rows)
    with torch.no_grad():
        for _, chunk in row_chunks(inputs, chunk_rows):
            x = torch.from_numpy(chunk)
            h = None if code_chunks is None else torch.from_numpy(next(code_chunks)[1])
            stats.update(model.objective(x, corrupt=False, codes=h), x)
    return stats.compute()
