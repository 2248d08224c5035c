"""Bounds on what a run may take: error lines, echoed values, YAML it reads, memory it plans to use."""

import pytest

from pipeline.app.limits import MAX_LINE_CHARS, cap_line, check_memory
from pipeline.config import PipelineConfig
from pipeline.config.reading import MAX_VALUES, check_size, quoted
from pipeline.errors import InputError


def test_a_long_error_line_is_cut_to_the_limit_and_says_how_much_is_left_out():
    line = cap_line("error: " + "x" * 10_000_000)
    assert len(line) <= MAX_LINE_CHARS and line.endswith("more characters)")
    assert cap_line("error: two\nlines") == "error: two lines"


def test_quoted_never_builds_a_huge_repr():
    value: list = ["x"] * 9
    for _ in range(12):  # 9**13 strings if expanded
        value = [value] * 9
    assert len(quoted(value)) < 200


def test_check_size_stops_at_the_bound_on_a_self_referencing_value():
    value: list = []
    value.append(value)
    with pytest.raises(InputError, match="nested more than"):
        check_size(value, "x")
    with pytest.raises(InputError, match=f"more than {MAX_VALUES:,} values"):
        check_size({"features": ["a"] * (MAX_VALUES + 1)}, "x")


def test_memory_estimate_names_the_layer_and_both_numbers():
    config = PipelineConfig.from_dict({"name": "m", "layers": [{"hidden": 10}, {"hidden": 100_000}]})
    check_memory(config, available=8 * 2**30)  # digits: 1,797 x 64, fits
    with pytest.raises(InputError, match=r"layers\.1 \(10 -> 100,000\) [\d.]+ GiB\) but the machine has 0\.5 GiB"):
        check_memory(config, available=2**29)


def test_memory_estimate_counts_the_unlabeled_files_and_their_rows(tmp_path):
    import numpy as np

    np.save(tmp_path / "lab.npy", np.ones((1_000, 100), dtype=np.float32))
    np.save(tmp_path / "pool.npy", np.ones((50_000, 100), dtype=np.float32))  # 20 MB: read, not memory-mapped
    data = {"source": str(tmp_path / "lab.npy")}
    layers = [{"hidden": 1_000}]
    alone = PipelineConfig.from_dict({"name": "m", "data": data, "layers": layers})
    pooled = PipelineConfig.from_dict({"name": "m", "data": data | {"unlabeled_source": str(tmp_path / "pool.npy")},
                                       "layers": layers})
    check_memory(alone, available=200 * 2**20)  # 1,000 rows: codes and probe in a few tens of MB
    with pytest.raises(InputError, match=r"pool\.npy \(50,000 x 100\) 0\.1 GiB, layers\.0 \(100 -> 1,000\) 0\.2"):
        check_memory(pooled, available=200 * 2**20)  # 51,000 rows' codes in memory (0.19 GiB) plus the pool's
