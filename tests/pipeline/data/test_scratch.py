"""Scratch arrays and temporary files: nothing is left on disk and no descriptor stays open."""

import gc
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import pipeline.data.codes as codes_module
from pipeline.data.codes import encode_in_chunks
from pipeline.data.scratch import scratch_array
from sae.train import _empty_temp_file


def open_descriptors(under: Path) -> int:
    """This process's open descriptors on files under ``under`` (deleted ones included). Counting all of them
    flaked: threads left by other tests open and close sockets meanwhile."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # closed since the listing
            continue
    return sum(target.startswith(str(under)) for target in targets)


def test_large_codes_go_to_an_unnamed_file_that_is_gone_with_the_array(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(codes_module, "MEMMAP_BYTES", 1024)  # 100 x 8 float32 codes count as large
    x = np.random.default_rng(0).random((100, 4), dtype=np.float32)
    codes = encode_in_chunks(lambda t: torch.cat([t, 2 * t], dim=1), x, 8, chunk_rows=30)
    assert isinstance(codes, np.memmap) and codes.shape == (100, 8)
    np.testing.assert_array_equal(codes[:, 4:], 2 * x)
    assert list(tmp_path.iterdir()) == []  # unlinked from the start
    del codes
    gc.collect()
    assert open_descriptors(tmp_path) == 0


def test_codes_written_to_a_path_are_read_only_and_hold_no_extra_descriptor(tmp_path):
    x = np.ones((10, 3), np.float32)
    codes = encode_in_chunks(lambda t: t + 1, x, 3, out_path=tmp_path / "codes.npy")
    assert not codes.flags.writeable and float(codes.sum()) == 60.0
    assert np.load(tmp_path / "codes.npy").shape == (10, 3)
    del codes
    gc.collect()
    assert open_descriptors(tmp_path) == 0


def test_a_scratch_array_of_no_rows_is_valid_and_writable():
    empty = scratch_array((0, 5))
    assert empty.shape == (0, 5) and empty.dtype == np.float32
    full = scratch_array((3, 2))
    full[:] = 7
    assert float(full.sum()) == 42.0


def test_the_history_temp_file_is_created_closed_and_left_to_the_caller(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = _empty_temp_file(".json")
    assert open_descriptors(tmp_path) == 0 and path.parent == tmp_path and path.read_text() == ""
