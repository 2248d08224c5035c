"""A lean L-BFGS for the probes' smooth, convex objectives: a flat parameter vector, an Armijo backtracking
line search, and the two-loop recursion in float64 numpy on the CPU.

``torch.optim.LBFGS`` spent about half of a 200-unit probe's time in its own Python (per-parameter views,
strong-Wolfe bookkeeping, ~40 tiny tensor ops an iteration for the history), which holds the GIL, so probes on
two threads ran no faster than one after the other. Here an iteration costs one objective evaluation (two
matrix products) plus a few microseconds of numpy.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch

Objective = Callable[[torch.Tensor], tuple[float, torch.Tensor]]  # x -> (loss, gradient), both at x

ARMIJO = 1e-4  # sufficient decrease: f(x + t d) <= f(x) + ARMIJO * t * g.d
BACKTRACK = 0.5  # step shrink factor while the decrease is not sufficient
MAX_BACKTRACKS = 30


def minimize(
    objective: Objective, x0: torch.Tensor, *, max_iter: int, tolerance_grad: float, tolerance_change: float = 1e-9,
    history: int = 20,
) -> tuple[torch.Tensor, int]:
    """Minimise ``objective`` from ``x0`` (1-D); returns (x, iterations).

    Stops when the largest gradient entry is at most ``tolerance_grad``, when a step or the loss changes by
    less than ``tolerance_change``, or after ``max_iter`` iterations (the criteria of ``torch.optim.LBFGS``).
    """
    x = x0.detach().clone()
    loss, grad = objective(x)
    g = _host(grad)
    pairs: deque[tuple[np.ndarray, np.ndarray, float]] = deque(maxlen=history)  # (s, y, 1 / y.s)
    iterations = 0
    while iterations < max_iter and np.abs(g).max() > tolerance_grad:
        direction = -_two_loop(g, pairs)
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            pairs.clear()
            direction, slope = -g, -float(g @ g)
        step = min(1.0, 1.0 / np.abs(g).sum()) if iterations == 0 else 1.0
        d = torch.as_tensor(direction, dtype=x.dtype, device=x.device)
        for _ in range(MAX_BACKTRACKS):
            trial = x + step * d
            new_loss, new_grad = objective(trial)
            if new_loss <= loss + ARMIJO * step * slope:
                break
            step *= BACKTRACK
        else:
            break  # no decrease along the direction at any step: as converged as float32 allows
        iterations += 1
        new_g = _host(new_grad)
        s, y = step * direction, new_g - g
        ys = float(y @ s)
        if ys > 1e-10:
            pairs.append((s, y, 1.0 / ys))
        change = abs(new_loss - loss)
        x, loss, g = trial, new_loss, new_g
        if np.abs(s).max() <= tolerance_change or change < tolerance_change:
            break
    return x, iterations


def _host(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _two_loop(g: np.ndarray, pairs: deque[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """The inverse-Hessian approximation times ``g``, from the stored curvature pairs (newest last)."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas), strict=True):
        q += (alpha - rho * float(y @ q)) * s
    return q
