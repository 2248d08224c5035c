"""The layer's gradient is held to the classic tutorial's hand-written backpropagation and to finite differences."""

import numpy as np
import pytest
import torch

from sae import SAEConfig, SparseAutoencoder


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def seed_cost_and_grad(W1, b1, W2, b2, X, rho, beta, lam):
    """The classic sparse autoencoder cost and backprop (UFLDL's sparseAutoencoderCost), rows as samples."""
    m = X.shape[0]
    a2 = _sigmoid(X @ W1.T + b1)
    a3 = _sigmoid(a2 @ W2.T + b2)
    rho_hat = a2.mean(axis=0)
    kl = np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
    cost = 0.5 * np.sum((a3 - X) ** 2) / m + lam / 2 * (np.sum(W1**2) + np.sum(W2**2)) + beta * kl
    delta3 = -(X - a3) * a3 * (1 - a3)
    sparsity_delta = beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat))
    delta2 = (delta3 @ W2 + sparsity_delta) * a2 * (1 - a2)
    grads = {
        "encoder.weight": delta2.T @ X / m + lam * W1,
        "encoder.bias": delta2.mean(axis=0),
        "decoder.weight": delta3.T @ a2 / m + lam * W2,
        "decoder.bias": delta3.mean(axis=0),
    }
    return cost, grads


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(a + b))


def _model(config: SAEConfig, seed: int = 0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    model = SparseAutoencoder(config).double()
    with torch.no_grad():  # biases away from zero so every term of the gradient is exercised
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(-0.3, 0.3)
    return model


def _data(n: int = 12, d: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.05, 0.95, (n, d)))


def _autograd(model: SparseAutoencoder, x: torch.Tensor, seed: int | None = None):
    model.zero_grad()
    if seed is not None:
        torch.manual_seed(seed)
    obj = model.objective(x, corrupt=seed is not None)
    obj.total.backward()
    return obj.total.item(), {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}


def _numerical(model: SparseAutoencoder, x: torch.Tensor, seed: int | None = None, eps: float = 1e-5):
    grads = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = np.zeros(p.shape)
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                values = []
                for v in (old + eps, old - eps):
                    flat[i] = v
                    if seed is not None:
                        torch.manual_seed(seed)
                    values.append(model.objective(x, corrupt=seed is not None).total.item())
                flat[i] = old
                g.reshape(-1)[i] = (values[0] - values[1]) / (2 * eps)
            grads[name] = g
    return grads


def test_kl_cost_and_gradient_match_the_seed_backprop_to_1e_9():
    config = SAEConfig(d_in=9, d_hidden=5, sparsity="kl", target=0.1, beta=3.0, weight_decay=0.003)
    model, x = _model(config), _data()
    cost, grads = _autograd(model, x)
    p = {n: t.detach().numpy() for n, t in model.named_parameters()}
    seed_cost, seed_grads = seed_cost_and_grad(
        p["encoder.weight"], p["encoder.bias"], p["decoder.weight"], p["decoder.bias"], x.numpy(), 0.1, 3.0, 0.003
    )
    assert abs(cost - seed_cost) / abs(seed_cost) < 1e-12
    for name, g in seed_grads.items():
        assert _relative(g, grads[name]) < 1e-9, name


@pytest.mark.parametrize(
    "overrides",
    [
        {"sparsity": "kl"},
        {"sparsity": "kl", "tied": True},
        {"sparsity": "l1", "beta": 0.5},
        {"sparsity": "l1", "encoder_activation": "relu", "decoder_activation": "linear"},
        {"sparsity": "topk", "k": 2, "encoder_activation": "relu", "decoder_activation": "linear"},
        {"sparsity": "topk", "k": 3},
        {"sparsity": "none", "encoder_activation": "tanh", "tied": True},
    ],
    ids=["kl", "kl-tied", "l1", "l1-relu", "topk-relu", "topk-sigmoid", "none-tanh-tied"],
)
def test_autograd_agrees_with_central_differences(overrides):
    config = SAEConfig(d_in=9, d_hidden=5, **overrides)
    model, x = _model(config), _data()
    _, grads = _autograd(model, x)
    numeric = _numerical(model, x)
    for name, g in numeric.items():
        assert _relative(g, grads[name]) < 1e-7, name


def test_denoising_gradient_agrees_with_central_differences_under_a_fixed_mask():
    config = SAEConfig(d_in=9, d_hidden=5, noise=0.3)
    model, x = _model(config), _data()
    _, grads = _autograd(model, x, seed=7)
    numeric = _numerical(model, x, seed=7)
    for name, g in numeric.items():
        assert _relative(g, grads[name]) < 1e-7, name


def test_tied_gradient_is_the_sum_of_encoder_and_decoder_paths():
    untied_cfg = SAEConfig(d_in=9, d_hidden=5)
    tied_cfg = SAEConfig(d_in=9, d_hidden=5, tied=True)
    x = _data()
    tied = _model(tied_cfg)
    untied = _model(untied_cfg)
    with torch.no_grad():
        untied.encoder.weight.copy_(tied.encoder.weight)
        untied.decoder.weight.copy_(tied.encoder.weight.t())
        untied.encoder.bias.copy_(tied.encoder.bias)
        untied.decoder.bias.copy_(tied.decoder.bias)
    # Same forward pass; the tied weight decay counts the matrix once, the untied one twice.
    _, g_tied = _autograd(tied, x)
    _, g_untied = _autograd(untied, x)
    lam = tied_cfg.weight_decay
    W = tied.encoder.weight.detach().numpy()
    expected = g_untied["encoder.weight"] + g_untied["decoder.weight"].T - lam * W
    assert _relative(expected, g_tied["encoder.weight"]) < 1e-12
