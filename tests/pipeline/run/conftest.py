"""The digits splits and one-layer stacks on them, shared by the fine-tuning tests."""

import pytest
import torch
from torch import nn

from sae.config import SAEConfig
from sae.stack import StackedEncoder


@pytest.fixture(scope="module")
def data():
    from pipeline.config import DataConfig
    from pipeline.data.loading import load_data

    return load_data(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="module")
def one_layer_stack(data):
    """``make(hidden)``: an untrained 64 -> hidden stack behind the digits scaling (seeded)."""
    def make(hidden: int) -> StackedEncoder:
        torch.manual_seed(0)
        return StackedEncoder(data.scaling, [(SAEConfig(d_in=64, d_hidden=hidden), nn.Linear(64, hidden))])

    return make
