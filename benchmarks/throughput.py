"""Is train_autoencoder (Lightning) as fast as a plain PyTorch loop doing the same math, and compiled faster?

Trains a 784 -> 200 kl layer for 2 epochs on 60,000 random samples, batch 256, Adam, four ways in this
process, alternating: the plain eager loop, train_autoencoder (eager, the default),
train_autoencoder(compile=True) and the plain loop with the fused Adam kernel train_autoencoder uses (no
target: what Lightning and the epoch statistics cost on their own). Prints samples/s of each, their ratios
to the plain loop (targets: eager >= 0.95, compiled >= 1.1), the compile time on its own (paid once per
shape in a process, before the timed runs), and the achieved GFLOP/s next to a large single matrix multiply
measured in the same run.

    .venv/bin/python benchmarks/throughput.py [--repeats 3] [--accelerator cpu|gpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile and tests: read when torch loads OpenMP

import numpy as np
import torch

from sae import SAEConfig, SparseAutoencoder, train_autoencoder
from sae.batches import ShuffledBatches

N, D_IN, D_HIDDEN, EPOCHS, BATCH, LR = 60_000, 784, 200, 2, 256, 1e-3
EAGER_TARGET, COMPILED_TARGET = 0.95, 1.1


def plain_loop(x: torch.Tensor, config: SAEConfig, device: str, fused: bool = False) -> float:
    """The same model, objective, batching and optimizer without Lightning; returns seconds.

    ``fused=False`` is Adam as a hand-written loop usually creates it; train_autoencoder uses the fused kernel,
    so ``fused=True`` shows what Lightning and the per-epoch statistics cost on their own."""
    torch.manual_seed(0)
    model = SparseAutoencoder(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=fused)
    batches = ShuffledBatches(x, BATCH, seed=0)
    _sync(device)
    start = time.perf_counter()
    for _ in range(EPOCHS):
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            model.objective(batch).total.backward()
            opt.step()
    _sync(device)
    return time.perf_counter() - start


def lightning_run(x: torch.Tensor, config: SAEConfig, accelerator: str, compile: bool = False) -> float:
    start = time.perf_counter()
    train_autoencoder(x, config, epochs=EPOCHS, batch_size=BATCH, lr=LR, trainer_options={"accelerator": accelerator},
                      compile=compile)
    return time.perf_counter() - start


def matmul_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args()
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (N, D_IN)).astype(np.float32)).to(device)
    config = SAEConfig(d_in=D_IN, d_hidden=D_HIDDEN, sparsity="kl")
    # Warm-up on rows giving both batch shapes of the timed runs (full batches and the last, short one).
    warm = x[: 8 * BATCH + N % BATCH]
    lightning_run(warm, config, args.accelerator)  # imports, allocator, threads
    plain_loop(warm, config, device)
    eager_warm = lightning_run(warm, config, args.accelerator)
    compile_s = lightning_run(warm, config, args.accelerator, compile=True) - eager_warm
    light, plain, compiled, fused = [], [], [], []
    for _ in range(args.repeats):  # alternate so drift on a shared machine hits every arm
        light.append(lightning_run(x, config, args.accelerator))
        plain.append(plain_loop(x, config, device))
        compiled.append(lightning_run(x, config, args.accelerator, compile=True))
        fused.append(plain_loop(x, config, device, fused=True))
    samples = N * EPOCHS
    lt, pt, ct = statistics.median(light), statistics.median(plain), statistics.median(compiled)
    ft = statistics.median(fused)
    flops_per_sample = 3 * 2 * 2 * D_IN * D_HIDDEN  # encoder + decoder matmuls, forward and ~2x backward
    peak = matmul_gflops(device)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} ({torch.get_num_threads()} threads); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"plain PyTorch loop:                  {samples / pt:10.0f} samples/s  ({pt:.2f} s, median of {args.repeats})")
    print(f"train_autoencoder (eager):           {samples / lt:10.0f} samples/s  ({lt:.2f} s)")
    print(f"train_autoencoder (compile=True):    {samples / ct:10.0f} samples/s  ({ct:.2f} s)")
    print(f"ratio eager / plain:                 {pt / lt:10.3f}   (target >= {EAGER_TARGET}: "
          f"{'PASS' if pt / lt >= EAGER_TARGET else 'FAIL'})")
    print(f"ratio compiled / plain:              {pt / ct:10.3f}   (target >= {COMPILED_TARGET}: "
          f"{'PASS' if pt / ct >= COMPILED_TARGET else 'FAIL'})")
    print(f"plain loop with fused Adam:          {samples / ft:10.0f} samples/s  ({ft:.2f} s); "
          f"eager / it: {ft / lt:.3f} (no target: Lightning and the epoch statistics alone)")
    print(f"compile time (once per shape, not in the runs above): {compile_s:.1f} s")
    print(f"achieved (eager): {samples * flops_per_sample / lt / 1e9:.1f} GFLOP/s; "
          f"2048^3 matmul: {peak:.1f} GFLOP/s ({samples * flops_per_sample / lt / 1e9 / peak:.0%} of it)")


if __name__ == "__main__":
    main()
