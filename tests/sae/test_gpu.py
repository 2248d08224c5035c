"""The same training on a GPU, when there is one (skipped on CPU-only machines such as CI)."""

import numpy as np
import pytest
import torch

from sae import SAEConfig, train_autoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("sparsity", ["kl", "topk"])
def test_gpu_training_follows_cpu_training(sparsity):
    x = np.random.default_rng(0).uniform(0.1, 0.9, (1024, 32)).astype(np.float32)
    config = SAEConfig(d_in=32, d_hidden=16, sparsity=sparsity, k=4 if sparsity == "topk" else None)
    args = {"epochs": 3, "batch_size": 128, "lr": 0.01, "seed": 0}
    cpu = train_autoencoder(x, config, **args)
    gpu = train_autoencoder(x, config, **args, trainer_options={"accelerator": "gpu", "devices": 1})
    assert gpu.encoder.weight.device.type == "cpu"  # handed back on the CPU, ready to save or stack
    assert gpu.history[-1]["loss"] == pytest.approx(cpu.history[-1]["loss"], rel=1e-3)
    assert torch.allclose(gpu.encoder.weight, cpu.encoder.weight, atol=1e-3)


def test_stacked_encoder_gives_the_same_codes_on_gpu():
    torch.manual_seed(0)
    model = train_autoencoder(
        np.random.default_rng(1).uniform(0, 1, (256, 16)).astype(np.float32), SAEConfig(d_in=16, d_hidden=8),
        epochs=1, batch_size=64, lr=0.01,
    )
    encoder = StackedEncoder.from_autoencoders(Scaling.identity(16), [model])
    x = torch.rand(100, 16)
    assert torch.allclose(encoder.cuda()(x.cuda()).cpu(), encoder.cpu()(x), atol=1e-5)
