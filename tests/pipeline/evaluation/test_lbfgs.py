"""The probes' L-BFGS reaches the minimiser that closed forms and torch's L-BFGS find."""

import numpy as np
import torch

from pipeline.evaluation import lbfgs


def test_an_ill_conditioned_quadratic_is_solved_to_the_gradient_tolerance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    a = torch.tensor(q @ np.diag(np.logspace(0, 2, 30)) @ q.T)  # condition number 100
    b = torch.tensor(rng.normal(size=30))

    def objective(x):
        return float(0.5 * x @ a @ x - b @ x), a @ x - b

    x, iterations = lbfgs.minimize(objective, torch.zeros(30, dtype=torch.float64), max_iter=500, tolerance_grad=1e-6,
                                   tolerance_change=0.0)
    assert np.abs(objective(x)[1].numpy()).max() <= 1e-6
    # |x - x*| <= |gradient| / smallest eigenvalue (1)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(a.numpy(), b.numpy()), atol=1e-6)
    assert 0 < iterations < 200


def test_a_regularised_softmax_matches_torchs_lbfgs_and_stops_at_max_iter():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(200, 5)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 200))

    def loss_of(w):
        return torch.nn.functional.cross_entropy(x @ w.view(5, 3), y) + 0.01 * w.pow(2).sum()

    def objective(w):
        w = w.detach().requires_grad_(True)
        loss = loss_of(w)
        loss.backward()
        return float(loss), w.grad

    ours, _ = lbfgs.minimize(objective, torch.zeros(15), max_iter=200, tolerance_grad=1e-6)
    reference = torch.zeros(15, requires_grad=True)
    opt = torch.optim.LBFGS([reference], max_iter=200, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of(reference)
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(ours.numpy(), reference.detach().numpy(), atol=1e-4)
    _, iterations = lbfgs.minimize(objective, torch.zeros(15), max_iter=3, tolerance_grad=1e-12)
    assert iterations == 3
