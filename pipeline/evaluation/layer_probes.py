"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.evaluation.probes import fit_probe, one_cpu_thread, probe_device, probe_rows
from sae import SparseAutoencoder
from sae.batches import row_chunks
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data.loading import LoadedData, Splits
    from pipeline.run.results import LayerResult

def probe_accuracies(
    data: LoadedData, layers: Sequence[LayerResult], *, seed: int = 0, accelerator: str = "cpu",
    raw: Future[float] | None = None,
) -> dict[str, float]:
    """Probe test accuracy on the scaled inputs (``raw``) and on each layer's codes (``layer_1``, ...).

    Each probe is ``pipeline.evaluation.probes.fit_probe`` (C chosen on the validation split) on the device of the
    Trainer ``accelerator`` setting; the codes are the layers' own (``LayerResult.codes``), never recomputed.
    ``raw`` is the raw probe ``raw_probe_ahead`` started for this data, seed and accelerator: taken instead of
    fitting it again.
    """
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    device = probe_device(accelerator)
    jobs = {**({} if raw is not None else {"raw": data.scaled()}),
            **{f"layer_{layer.index + 1}": layer.codes for layer in layers}}
    # On CPU each probe runs on one thread (see pipeline.evaluation.probes); with more cores, probes run side by side:
    # their L-BFGS holds the GIL little (two 200-unit probes on MNIST codes: 0.45 s on two threads, 0.64 s in turn).
    workers = min(len(jobs), torch.get_num_threads()) if device.type == "cpu" else 1
    if workers <= 1:
        out = {name: probe_test_accuracy(data, splits, seed, device) for name, splits in jobs.items()}
    else:
        with one_cpu_thread(device), ThreadPoolExecutor(workers, thread_name_prefix="sae-probe") as pool:
            out = dict(zip(jobs, pool.map(lambda splits: probe_test_accuracy(data, splits, seed, device),
                                          jobs.values()), strict=True))
    return {"raw": raw.result(), **out} if raw is not None else out


def probe_test_accuracy(data: LoadedData, splits: Splits, seed: int, device: torch.device) -> float:
    """Test accuracy of the probe fitted on ``splits`` (features aligned with ``data``'s rows): the labeled
    training rows (at most PROBE_MAX_TRAIN, seeded) fit it, the labeled validation rows choose its C."""
    assert data.y_train is not None and data.y_val is not None
    train, val = data.labeled_rows("train"), data.labeled_rows("val")
    train = train[probe_rows(train.size, seed)]
    return fit_probe(np.asarray(splits.train[train], np.float32), np.asarray(data.y_train)[train],
                     np.asarray(splits.val[val]), np.asarray(data.y_val)[val], np.asarray(splits.test),
                     np.asarray(data.y_test), device=device).test_accuracy


@contextmanager
def raw_probe_ahead(data: LoadedData, *, seed: int = 0, accelerator: str = "cpu") -> Iterator[Future[float] | None]:
    """Fit the raw-input probe of labelled ``data`` on a thread now, and yield its future (None for unlabelled
    data): it needs the data alone, so the CLI starts it while Prefect starts its temporary server (seconds
    with a core idle) and hands it to ``probe_accuracies(raw=...)``. Leaving the block drops it."""
    if data.y_train is None or data.y_val is None or data.y_test is None:
        yield None
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="sae-raw-probe")
    try:
        yield pool.submit(probe_test_accuracy, data, data.scaled(), seed, probe_device(accelerator))
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
