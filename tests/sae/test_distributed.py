"""Data-parallel training (ddp_spawn, 2 CPU processes over gloo) computes the single-process objective."""

import numpy as np
import pytest
import torch

from sae import SAEConfig, train_autoencoder


@pytest.mark.slow
def test_ddp_spawn_on_two_processes_matches_single_process_training():
    x = np.random.default_rng(0).uniform(0.1, 0.9, (512, 16)).astype(np.float32)
    config = SAEConfig(d_in=16, d_hidden=8)  # kl: rho_hat over the global batch, gathered from both ranks
    args = {"epochs": 3, "batch_size": 64, "lr": 0.01, "seed": 0}
    single = train_autoencoder(x, config, **args)
    ddp = train_autoencoder(x, config, **args, trainer_options={"strategy": "ddp_spawn", "devices": 2})
    assert len(ddp.history) == 3
    for key in ("loss", "reconstruction", "sparsity", "rho_hat_mean", "l0"):
        assert ddp.history[-1][key] == pytest.approx(single.history[-1][key], rel=1e-5), key
    assert torch.allclose(ddp.encoder.weight, single.encoder.weight, atol=1e-5)
