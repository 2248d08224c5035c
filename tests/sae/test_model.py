"""Behaviour of one layer: configuration checks, penalties, TopK, tying, denoising, metrics."""

import math

import numpy as np
import pytest
import torch

from sae import SAEConfig, SparseAutoencoder
from sae.metrics import EpochStats
from sae.penalties import kl_penalty, l1_penalty, topk_mask


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"d_in": 0, "d_hidden": 4}, "d_in=0"),
        ({"d_in": 4, "d_hidden": -1}, "d_hidden=-1"),
        ({"d_in": 4, "d_hidden": 4, "sparsity": "l2"}, "sparsity='l2'"),
        ({"d_in": 4, "d_hidden": 4, "target": 1.0}, "target=1.0"),
        ({"d_in": 4, "d_hidden": 4, "beta": -1}, "beta=-1"),
        ({"d_in": 4, "d_hidden": 4, "weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"d_in": 4, "d_hidden": 4, "noise": 1.0}, "noise=1.0"),
        ({"d_in": 4, "d_hidden": 4, "sparsity": "topk"}, "k=None"),
        ({"d_in": 4, "d_hidden": 4, "sparsity": "topk", "k": 5}, "k=5"),
        ({"d_in": 4, "d_hidden": 4, "encoder_activation": "relu"}, "kl penalty needs activations in (0, 1)"),
        ({"d_in": 4, "d_hidden": 4, "decoder_activation": "relu"}, "decoder_activation='relu'"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, fragment):
    with pytest.raises(ValueError, match=None) as info:
        SAEConfig(**kwargs)
    assert fragment in str(info.value)


def test_config_round_trips_through_dict():
    config = SAEConfig(d_in=4, d_hidden=3, sparsity="topk", k=2, encoder_activation="relu", tied=True)
    assert SAEConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        SAEConfig.from_dict({**config.to_dict(), "rho": 0.1})


def test_kl_penalty_is_zero_at_target_and_positive_elsewhere():
    assert kl_penalty(torch.full((5,), 0.1), 0.1).item() == pytest.approx(0.0, abs=1e-7)
    value = kl_penalty(torch.tensor([0.2]), 0.1).item()
    expected = 0.1 * math.log(0.1 / 0.2) + 0.9 * math.log(0.9 / 0.8)
    assert value == pytest.approx(expected, rel=1e-6)


def test_l1_penalty_is_the_batch_mean_of_row_sums():
    codes = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert l1_penalty(codes).item() == pytest.approx(3.0)


def test_topk_keeps_only_the_k_largest_pre_activations():
    torch.manual_seed(0)
    model = SparseAutoencoder(SAEConfig(d_in=10, d_hidden=20, sparsity="topk", k=3))
    x = torch.rand(50, 10)
    codes = model.encode(x)
    assert ((codes != 0).sum(dim=1) <= 3).all()
    pre = model.encoder(x)
    kept = codes != 0
    assert torch.equal(kept, topk_mask(pre, 3))
    assert torch.allclose(codes[kept], torch.sigmoid(pre)[kept])


def test_initialisation_follows_the_classic_range_and_zero_biases():
    torch.manual_seed(0)
    model = SparseAutoencoder(SAEConfig(d_in=64, d_hidden=25))
    r = math.sqrt(6) / math.sqrt(64 + 25 + 1)
    for w in model.weights():
        assert w.abs().max().item() <= r
        assert w.abs().max().item() > 0.9 * r
    assert model.encoder.bias.abs().sum().item() == 0
    assert model.decoder.bias.abs().sum().item() == 0


def test_tied_decoder_uses_the_encoder_weight_and_its_own_bias():
    model = SparseAutoencoder(SAEConfig(d_in=6, d_hidden=4, tied=True))
    names = {n for n, _ in model.named_parameters()}
    assert names == {"encoder.weight", "encoder.bias", "decoder.bias"}
    assert torch.equal(model.decoder_weight, model.encoder.weight.t())
    obj = model.objective(torch.rand(3, 6))
    assert obj.weight_decay.item() == pytest.approx(0.5 * 0.003 * model.encoder.weight.pow(2).sum().item(), rel=1e-6)


def test_objective_terms_add_up_and_follow_the_seed_definitions():
    torch.manual_seed(0)
    model = SparseAutoencoder(SAEConfig(d_in=6, d_hidden=4)).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    obj = model.objective(x)
    assert obj.total.item() == pytest.approx((obj.reconstruction + obj.sparsity + obj.weight_decay).item())
    recon = model(x)
    assert obj.reconstruction.item() == pytest.approx(0.5 * ((recon - x) ** 2).sum(1).mean().item())
    assert obj.sparsity.item() == pytest.approx(3.0 * kl_penalty(model.encode(x).mean(0), 0.1).item())


def test_denoising_zeroes_about_the_noise_fraction_only_in_training():
    model = SparseAutoencoder(SAEConfig(d_in=100, d_hidden=4, noise=0.3))
    x = torch.ones(200, 100)
    assert (model.corrupt(x) == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    model.eval()
    torch.manual_seed(0)
    a = model.objective(x).total
    torch.manual_seed(1)
    assert torch.equal(a, model.objective(x).total)  # eval: no corruption, so the seed is irrelevant


def test_epoch_stats_count_active_units_and_dead_units():
    config = SAEConfig(d_in=2, d_hidden=3, target=0.1)  # sigmoid: active above 0.05
    stats = EpochStats(config)
    model = SparseAutoencoder(config)
    x = torch.tensor([[0.2, 0.4], [0.6, 0.8]])
    obj = model.objective(x)._replace(codes=torch.tensor([[0.9, 0.01, 0.0], [0.9, 0.06, 0.0]]))
    stats.update(obj, x)
    m = stats.compute()
    assert m["l0"] == pytest.approx(1.5)
    assert m["dead_fraction"] == pytest.approx(1 / 3)
    assert m["rho_hat_mean"] == pytest.approx(np.mean([0.9, 0.035, 0.0]))
    assert m["loss"] == pytest.approx(obj.total.item())
    sse = (obj.recon - x).pow(2).sum().item()
    assert m["mse"] == pytest.approx(sse / 4)
    assert m["fvu"] == pytest.approx(sse / ((x - x.mean(0)) ** 2).sum().item())


@pytest.mark.parametrize("tied", [False, True])
def test_a_layer_with_its_own_generator_draws_what_the_seeded_global_rng_draws(tied):
    config = SAEConfig(d_in=12, d_hidden=5, noise=0.3, tied=tied)
    torch.manual_seed(7)
    global_rng = SparseAutoencoder(config)
    global_mask = global_rng.corrupt(torch.ones(4, 12))
    torch.manual_seed(123)  # the global RNG elsewhere: the generator's layer must not care
    own = SparseAutoencoder(config, generator=torch.Generator().manual_seed(7))
    own_mask = own.corrupt(torch.ones(4, 12))
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in global_rng.state_dict().items())
    assert torch.equal(global_mask, own_mask) and 0 < int(own_mask.sum()) < 48
