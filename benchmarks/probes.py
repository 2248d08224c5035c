"""Is the torch probe (pipeline.evaluation.probes) at least 5x faster than the scikit-learn one, at the same accuracy?

Codes: a 784 -> 200 kl layer trained for a few epochs on ../shared/data/mnist-5k.npz (4,000 train / 500
validation / 500 test rows), so the probe sees 4,000 x 200 codes. Without that file the same shapes come
from synthetic clustered data (said in the output). Both probes walk the same C path, choose C on the
validation split by its log-loss and report test accuracy; they alternate in this process after one untimed warm-up each.
Also prints the raw-pixel (784-feature) probe both ways. Target: speed-up >= 5x on the codes, accuracy
difference <= 0.003.

    .venv/bin/python benchmarks/probes.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile and tests: read when torch loads OpenMP
import numpy as np  # noqa: E402
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluation.probes import PROBE_CS, fit_probe  # noqa: E402
from sae import SAEConfig, train_autoencoder  # noqa: E402

MNIST = ROOT.parent / "shared" / "data" / "mnist-5k.npz"
N_TRAIN, N_VAL, HIDDEN, SPEEDUP_TARGET, ACCURACY_TOLERANCE = 4000, 500, 200, 5.0, 0.003


def sklearn_probe(train, y_train, val, y_val, test, y_test) -> tuple[float, float]:  # noqa: ANN001
    """scikit-learn's lbfgs, one thread, a fresh fit per C, C chosen as fit_probe does: (C, test accuracy)."""
    scaler = StandardScaler().fit(train)
    train, val, test = scaler.transform(train), scaler.transform(val), scaler.transform(test)
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [LogisticRegression(C=c, max_iter=300).fit(train, y_train) for c in PROBE_CS]
        best = min(fits, key=lambda clf: log_loss(y_val, clf.predict_proba(val), labels=clf.classes_))
        return float(best.C), float(best.score(test, y_test))


def data() -> tuple[str, np.ndarray, np.ndarray]:
    if MNIST.exists():
        with np.load(MNIST) as d:
            return f"{MNIST.name}", d["images"].astype(np.float32) / 255.0, d["labels"].astype(np.int64)
    print(f"{MNIST} is absent: using synthetic clustered data of the same shape instead")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 5000)
    centers = rng.uniform(0, 1, (10, 784))
    return "synthetic", np.clip(centers[y] + rng.normal(0, 0.4, (5000, 784)), 0, 1).astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name, X, y = data()
    order = np.random.default_rng(0).permutation(X.shape[0])
    X, y = X[order], y[order]
    X = 0.1 + 0.8 * X  # the pipeline's unit scaling
    splits = (slice(0, N_TRAIN), slice(N_TRAIN, N_TRAIN + N_VAL), slice(N_TRAIN + N_VAL, None))
    layer = train_autoencoder(X[splits[0]], SAEConfig(d_in=784, d_hidden=HIDDEN), epochs=5, batch_size=128, lr=3e-3)
    with torch.no_grad():
        codes = layer.encode(torch.from_numpy(X)).numpy()
    print(f"data: {name}; codes {codes[splits[0]].shape}, C path {PROBE_CS}; torch threads {torch.get_num_threads()}")
    for what, features in (("codes", codes), ("raw pixels", X)):
        parts = [a for s in splits for a in (features[s], y[s])]
        sklearn_probe(*parts), fit_probe(*parts)  # warm-up: imports, first calls
        sk_s, th_s = [], []
        for _ in range(args.repeats):  # alternate so drift on a shared machine hits both
            start = time.perf_counter()
            sk_c, sk_acc = sklearn_probe(*parts)
            sk_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            fit = fit_probe(*parts)
            th_s.append(time.perf_counter() - start)
        sk, th = statistics.median(sk_s), statistics.median(th_s)
        print(f"\n{what} {features[splits[0]].shape}:")
        print(f"  scikit-learn: {sk:7.3f} s  C={sk_c:<6g} test accuracy {sk_acc:.4f}")
        print(f"  torch probe:  {th:7.3f} s  C={fit.c:<6g} test accuracy {fit.test_accuracy:.4f}  "
              f"({fit.iterations} iterations along the path)")
        diff = abs(fit.test_accuracy - sk_acc)
        verdict = "PASS" if sk / th >= SPEEDUP_TARGET and diff <= ACCURACY_TOLERANCE else "FAIL"
        print(f"  speed-up {sk / th:.1f}x (target >= {SPEEDUP_TARGET:g}x), accuracy difference {diff:.4f} "
              f"(target <= {ACCURACY_TOLERANCE}): {verdict}")


if __name__ == "__main__":
    main()
