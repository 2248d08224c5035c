"""Linear probes in torch: multinomial logistic regression by full-batch L-BFGS (``pipeline.evaluation.lbfgs``) on
standardised features.

The objective is scikit-learn's (``LogisticRegression(C=c)``, lbfgs, multinomial): mean cross-entropy plus
``||W||^2 / (2 * C * n)``, intercepts unpenalised. The L2 strength is chosen on the validation split along a
warm-started path, strongest regularisation first, each fit starting from the previous solution, by the
validation cross-entropy (log-loss): on a few hundred validation rows accuracy moves in steps of one row and
picked Cs almost at random (digits: 144 rows, three Cs within one row of each other), while the log-loss is a
smooth curve with one clear minimum. The test split is only scored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.labels import class_indices, indices_of
from pipeline.evaluation import lbfgs

PROBE_CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # inverse L2 strengths, chosen on validation
PROBE_MAX_ITER = 300  # L-BFGS iterations per C at most (warm starts need far fewer)
PROBE_TOLERANCE = 1e-6  # each C's fit stops when its largest gradient entry is below this (scikit-learn: 1e-4)
PROBE_MAX_TRAIN = 20_000  # probes fit on at most this many (seeded) training rows to bound their cost
PROBE_PATIENCE = 2  # the path stops once the validation log-loss rose on this many Cs in a row past the best
PRECONDITION_MAX_FEATURES = 2048  # whiten coordinates up to this width (one d x d eigendecomposition)
PRECONDITION_CURVATURE = 0.01  # rough softmax curvature scale: whitening shifts eigenvalues by 2 * decay / this



def probe_rows(n: int, seed: int, max_rows: int = PROBE_MAX_TRAIN) -> np.ndarray:
    """The training rows a probe fits on: all ``n``, or ``max_rows`` of them drawn with ``seed``, in order."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))


class PathPoint(NamedTuple):
    """One C along the path: its validation accuracy and log-loss, and the L-BFGS iterations its fit took."""

    c: float
    val_accuracy: float
    val_log_loss: float
    iterations: int


@dataclass(frozen=True)
class ProbeFit:
    """The chosen probe: its C, validation and test accuracy, and the L-BFGS iterations the path took."""

    c: float
    val_accuracy: float
    test_accuracy: float  # nan when no test split was given
    iterations: int  # along the whole path, the chosen C's final convergence included
    path: tuple[PathPoint, ...] = ()  # every C in path order


def probe_device(accelerator: str) -> torch.device:
    """The torch device of a Trainer ``accelerator`` setting (auto: a GPU when one is visible)."""
    match accelerator:
        case "cpu":
            return torch.device("cpu")
        case "gpu" | "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"accelerator={accelerator!r} but no CUDA device is visible; use cpu or auto")
            return torch.device("cuda")
        case "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        case _:
            raise ValueError(f"unknown accelerator {accelerator!r}; choose auto, cpu or gpu")


_ONE_THREAD = threading.Lock()
_one_thread_users = [0, 0]  # [blocks inside one_cpu_thread now, the thread count to restore when none is]


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on CPU: these fits are latency-bound, and a second thread spinning against a busy
    core made them 20-50x slower on the shared 2-core machine (measured: 3.6 s vs 0.08 s for the same path).
    The setting is process-wide, and probes run on several Python threads at once (the run's probes, the raw
    one fitted ahead, parallel tuning trials): the first block to enter saves the count, the last to leave
    restores it, whatever order they end in."""
    if device.type != "cpu":
        yield
        return
    with _ONE_THREAD:
        if _one_thread_users[0] == 0:
            _one_thread_users[1] = torch.get_num_threads()
            torch.set_num_threads(1)
        _one_thread_users[0] += 1
    try:
        yield
    finally:
        with _ONE_THREAD:
            _one_thread_users[0] -= 1
            if _one_thread_users[0] == 0:
                torch.set_num_threads(_one_thread_users[1])


def standardiser(rows: np.ndarray, device: torch.device | str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """A map of (m, d) features to (m, d') tensors on ``device`` standardised with the mean and deviation of
    ``rows`` (n, d). Columns constant in ``rows`` (MNIST's border pixels: 143 of 784) standardise to 0 and get
    weight 0 at any C: they are left out (d' of d kept), which makes every fit that much cheaper."""
    x = torch.as_tensor(np.asarray(rows, dtype=np.float32), device=device)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    varying = torch.nonzero(std > 0).squeeze(1)
    every = varying.numel() == x.shape[1]
    if not every:
        mean, std = mean[varying], std[varying]

    def features(part: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(part, dtype=np.float32), device=device)
        return ((t if every else t[:, varying]) - mean) / std

    return features


def scores(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, log-loss) of (k, d) weights and (k, 1) biases on rows ``x`` (n, d) with class indices ``y``:
    the fraction whose top class is ``y``, and the mean cross-entropy of the rows whose label was seen in
    training (``y >= 0``; 0 when none was)."""
    logits = torch.addmm(b, w, x.t())  # (k, n)
    accuracy = float((logits.argmax(0) == y).float().mean())
    seen = y >= 0
    if not bool(seen.any()):
        return accuracy, 0.0
    log_p = torch.log_softmax(logits[:, seen], 0)
    return accuracy, float(-log_p.gather(0, y[seen].unsqueeze(0)).mean())


def path_fits(x: torch.Tensor, y: torch.Tensor, n_classes: int, cs: Sequence[float], *, max_iter: int = PROBE_MAX_ITER
              ) -> Iterator[tuple[float, torch.Tensor, torch.Tensor, int]]:
    """(C, w (k, d), b (k, 1), L-BFGS iterations) for each C of ``cs`` sorted strong -> weak, each fit converged
    and warm-started from the one before, on features ``x`` (n, d) (standardised) with class indices ``y`` (n,)."""
    n = x.shape[0]
    target = F.one_hot(y, n_classes).t().to(x.dtype)  # (k, n)
    eig = _covariance_eig(x) if x.shape[1] <= PRECONDITION_MAX_FEATURES else None
    x_fit = x if eig is None else x @ eig[1]  # rotated once onto the covariance's eigenvectors
    w, b = torch.zeros(n_classes, x.shape[1], device=x.device), torch.zeros(n_classes, 1, device=x.device)
    for c in sorted(cs):
        w, b, steps = _fit_one(x_fit, target, w, b, 0.5 / (c * n), eig, max_iter, PROBE_TOLERANCE)
        yield c, w, b, steps


def fit_probe(
    train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray,
    test: np.ndarray | None = None, y_test: np.ndarray | None = None,
    *, cs: Sequence[float] = PROBE_CS, device: torch.device | str = "cpu", max_iter: int = PROBE_MAX_ITER,
) -> ProbeFit:
    """Fit probes along ``cs`` (sorted strong -> weak, warm-started) on ``train``; keep the C whose fit has
    the lowest cross-entropy on ``val``.

    Every fit is converged (``PROBE_TOLERANCE``): half-converged fits at weak regularisation are implicitly
    regularised by stopping early and were ranked too well. The path stops once the validation log-loss rose
    ``PROBE_PATIENCE`` times in a row past its best (the weak end is the slow end: 3x fewer iterations on MNIST
    codes). The chosen fit is the one scored on validation and test (``nan`` without a test split: choosing,
    as a tuning objective does, needs none).
    Features are standardised with the training mean and standard deviation (columns constant there left out).
    Labels may be any values; validation or test labels unseen in training count as errors (and are left out
    of the validation log-loss, the same for every C). Ties go to the stronger regularisation.
    """
    if not cs:
        raise ValueError("cs is empty: pass at least one inverse regularisation strength, e.g. (0.1, 1.0, 10.0)")
    device = torch.device(device)
    with one_cpu_thread(device), torch.no_grad():
        return _fit_path(train, y_train, val, y_val, test, y_test, cs=cs, device=device, max_iter=max_iter)


def _fit_path(
    train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray,
    test: np.ndarray | None, y_test: np.ndarray | None,
    *, cs: Sequence[float], device: torch.device, max_iter: int,
) -> ProbeFit:
    classes, y_idx = class_indices(y_train)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(indices_of(classes, y), device=device)

    features = standardiser(train, device)
    x, xv, yv = features(train), features(val), labels(y_val)
    best: tuple[PathPoint, torch.Tensor, torch.Tensor] | None = None
    path: list[PathPoint] = []
    for c, w, b, steps in path_fits(x, torch.as_tensor(y_idx, device=device), len(classes), cs, max_iter=max_iter):
        point = PathPoint(c, *scores(w, b, xv, yv), steps)
        path.append(point)
        if best is None or point.val_log_loss < best[0].val_log_loss:
            best = (point, w, b)
        rising = [p.val_log_loss for p in path[-PROBE_PATIENCE - 1:]]
        if len(path) > PROBE_PATIENCE and path[-PROBE_PATIENCE - 1].c >= best[0].c and rising == sorted(rising):
            break
    assert best is not None
    chosen, w, b = best
    iterations = sum(p.iterations for p in path)
    test_accuracy = float("nan")
    if test is not None and y_test is not None:
        test_accuracy = scores(w, b, features(test), labels(y_test))[0]
    return ProbeFit(chosen.c, chosen.val_accuracy, test_accuracy, iterations, tuple(path))


def _covariance_eig(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (d,) and eigenvectors (d, d) of the standardised features' covariance."""
    values, vectors = torch.linalg.eigh((x.t() @ x).double() / x.shape[0])
    return values.clamp_min(0.0).to(x.dtype), vectors.to(x.dtype)


def _fit_one(
    x: torch.Tensor, target: torch.Tensor, w: torch.Tensor, b: torch.Tensor, decay: float,
    eig: tuple[torch.Tensor, torch.Tensor] | None, max_iter: int, tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise mean cross-entropy + decay * ||W||^2 from (w, b): the new (w (k, d), b (k, 1), iterations).

    With ``eig`` (of the feature covariance, x = the features already rotated onto its eigenvectors U) the fit
    walks whitened coordinates, W = V diag(s) U^T with s = (eigenvalues + a)^(-1/2): the same objective, but
    correlated codes no longer make L-BFGS zig-zag (4x fewer iterations along the path on MNIST codes).
    """
    if eig is None:
        s, rotate = torch.ones(x.shape[1], device=x.device), None
    else:
        values, rotate = eig
        s = (values + 2 * decay / PRECONDITION_CURVATURE).rsqrt()
    z = x * s
    # Classes along dim 0: log_softmax over a short last dimension was 20x slower on CPU than over the first.
    z_t = z.t().contiguous()  # (d, n)
    v = (w if rotate is None else w @ rotate) / s
    k, d = v.shape
    n, s2 = x.shape[0], s * s

    def objective(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        v, b = theta[: k * d].view(k, d), theta[k * d :].view(k, 1)
        log_p = torch.log_softmax(torch.addmm(b, v, z_t), 0)  # (k, n)
        loss = -(log_p * target).sum() / n + decay * (v.pow(2) * s2).sum()
        # The gradient in closed form (softmax minus one-hot): half the cost of autograd at this size.
        residual = (log_p.exp() - target) / n
        return float(loss), torch.cat((torch.addmm(v * s2, residual, z, beta=2 * decay).ravel(), residual.sum(1)))

    theta, iterations = lbfgs.minimize(objective, torch.cat((v.ravel(), b.ravel())), max_iter=max_iter,
                                       tolerance_grad=tolerance)
    w = theta[: k * d].view(k, d) * s
    return (w if rotate is None else w @ rotate.t()), theta[k * d :].view(k, 1).clone(), iterations
