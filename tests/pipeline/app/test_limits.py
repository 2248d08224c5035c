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
