"""EpochStats: the input sums of an earlier epoch over the same rows give the same metrics without recomputing."""

import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.metrics import EpochStats


def test_known_input_sums_give_the_metrics_of_a_full_pass() -> None:
    config = SAEConfig(d_in=10, d_hidden=4)
    model = SparseAutoencoder(config).eval()
    batches = list(torch.rand(50, 10).split(16))
    first = EpochStats(config)
    for x in batches:
        first.update(model.objective(x), x)
    full = first.compute()
    assert first.inputs is not None
    again = EpochStats(config, inputs=first.inputs)
    for x in batches:
        again.update(model.objective(x), x)
    assert again.x_sum is None  # the steps skipped the input reductions
    reused = again.compute()
    assert reused == pytest.approx(full, rel=1e-6)
    assert 0 < reused["fvu"] < 10 and reused["mse"] > 0
