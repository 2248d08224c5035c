"""Data bigger than memory: memmapped inputs and codes through the pipeline, with bounded resident memory."""

import tempfile

import numpy as np
import torch

import pipeline.data.codes as codes_module
import pipeline.data.loading as loading_module
import sae.batches as batches_module
import sae.train as train_module
from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from sae.batches import ShuffledBatches, release_pages

MB = 2**20


def write_npy(path, rows, d, seed=0, chunk=16_384):
    """A (rows, d) float32 .npy of uniform [0, 1] values, written in chunks and unmapped again."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, d))
    rng = np.random.default_rng(seed)
    for start in range(0, rows, chunk):
        out[start : start + chunk] = rng.random((min(chunk, rows - start), d), dtype=np.float32)
    out.flush()
    del out
    return path


def test_a_memmapped_npy_trains_through_the_stack_on_memmapped_inputs_and_codes(tmp_path, monkeypatch):
    path = write_npy(tmp_path / "x.npy", rows=20 * MB // (4 * 64), d=64)  # 20 MB
    monkeypatch.setattr(loading_module, "LARGE_FILE_BYTES", 10 * MB)  # the 20 MB file counts as large
    monkeypatch.setattr(codes_module, "MEMMAP_BYTES", 1 * MB)  # codes of 5 MB and more go to disk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # scratch files for scaled copies and codes go here
    seen = []

    class Recording(ShuffledBatches):
        def __init__(self, data, *args, **kwargs):
            seen.append(isinstance(data, np.memmap))
            super().__init__(data, *args, **kwargs)

    monkeypatch.setattr(train_module, "ShuffledBatches", Recording)
    config = PipelineConfig.from_dict({
        "name": "ooc", "data": {"source": str(path)},
        "defaults": {"epochs": 1, "batch_size": 1024, "lr": 0.01},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 16}, {"hidden": 8}], "finetune": {"epochs": 0},
    })
    result = pretrain_stack(config)
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]  # scaled copies and codes left no file behind
    data = result.data
    assert isinstance(data.X_train, np.memmap) and isinstance(data.scaled().train, np.memmap)
    assert seen and seen[0] and seen[1]  # both layers' training batches come from memmaps
    first, second = result.layers
    assert isinstance(first.codes.train, np.memmap) and first.codes.train.shape == (data.X_train.shape[0], 16)
    assert isinstance(second.codes.train, np.memmap) and second.codes.train.shape == (data.X_train.shape[0], 8)
    with torch.no_grad():
        expected = first.model.encode(torch.from_numpy(np.array(data.scaled().train[-100:]))).numpy()
    np.testing.assert_allclose(first.codes.train[-100:], expected, rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(layer.history[-1]["loss"]) for layer in result.layers)


def test_an_epoch_over_a_memmap_releases_every_block_right_after_reading_it(tmp_path, monkeypatch):
    """How much resident memory that saves is measured (benchmarks/out_of_core.py), not asserted here: the
    behaviour is that each block's pages are released once copied, covering every row exactly once."""
    path = write_npy(tmp_path / "big.npy", rows=10_000, d=16)
    X = np.load(path, mmap_mode="r")[:-10]  # a view, as load_data's train split is
    events = []
    release = batches_module.release_pages

    def recording(array, start, stop):
        events.append(("release", start, min(stop, array.shape[0])))
        release(array, start, stop)

    monkeypatch.setattr(batches_module, "release_pages", recording)
    rows = 0
    for batch in ShuffledBatches(X, 100, seed=1, block_rows=1000):
        events.append(("batch", batch.shape[0]))
        rows += batch.shape[0]
    assert rows == X.shape[0]
    released = sorted((start, stop) for kind, *span in events if kind == "release" for start, stop in [span])
    assert released == [(start, min(start + 1000, X.shape[0])) for start in range(0, X.shape[0], 1000)]
    assert events[0][0] == "release"  # the first block is released before its first batch is handed out
    between = "".join("r" if kind == "release" else "b" for kind, *_ in events).split("r")[1:]
    assert max(map(len, between)) <= 11  # at most one block (plus the carried-over rows) between releases


def test_release_pages_leaves_the_data_readable_and_ignores_in_memory_arrays(tmp_path):
    path = write_npy(tmp_path / "x.npy", rows=4096, d=8)
    X = np.load(path, mmap_mode="r+")
    expected = np.array(X)
    X[10:20] = 2.0  # a dirty page: released, its data must survive
    release_pages(X, 0, 4096)
    expected[10:20] = 2.0
    np.testing.assert_array_equal(np.array(X), expected)
    release_pages(expected, 0, 10)  # not memory-mapped: a no-op
    release_pages(X[100:], 5, 3)  # an empty range: a no-op
    assert X.shape == (4096, 8)
