"""Is train_autoencoder (Lightning) as fast as a plain PyTorch loop doing the same math?

Trains a 784 -> 200 kl layer for 2 epochs on 60,000 random samples, batch 256, Adam, both ways in this
process, alternating, and prints samples/s of each, their ratio (target >= 0.9), and the achieved GFLOP/s
next to a large single matrix multiply measured in the same run.

    .venv/bin/python benchmarks/throughput.py [--repeats 3] [--accelerator cpu|gpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sae import SAEConfig, SparseAutoencoder, train_autoencoder
from sae.batches import ShuffledBatches

N, D_IN, D_HIDDEN, EPOCHS, BATCH, LR = 60_000, 784, 200, 2, 256, 1e-3


def plain_loop(x: torch.Tensor, config: SAEConfig, device: str) -> float:
    """The same model, objective, batching and optimizer without Lightning; returns seconds."""
    torch.manual_seed(0)
    model = SparseAutoencoder(config).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
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


def lightning_run(x: torch.Tensor, config: SAEConfig, accelerator: str) -> float:
    start = time.perf_counter()
    train_autoencoder(x, config, epochs=EPOCHS, batch_size=BATCH, lr=LR, trainer_options={"accelerator": accelerator})
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
    lightning_run(x[:2048], config, args.accelerator)  # warm-up: imports, allocator, threads
    plain_loop(x[:2048], config, device)
    light, plain = [], []
    for _ in range(args.repeats):  # alternate so drift on a shared machine hits both
        light.append(lightning_run(x, config, args.accelerator))
        plain.append(plain_loop(x, config, device))
    samples = N * EPOCHS
    lt, pt = statistics.median(light), statistics.median(plain)
    flops_per_sample = 3 * 2 * 2 * D_IN * D_HIDDEN  # encoder + decoder matmuls, forward and ~2x backward
    peak = matmul_gflops(device)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} ({torch.get_num_threads()} threads)")
    print(f"train_autoencoder (Lightning): {samples / lt:10.0f} samples/s  ({lt:.2f} s, median of {args.repeats})")
    print(f"plain PyTorch loop:            {samples / pt:10.0f} samples/s  ({pt:.2f} s)")
    print(f"ratio Lightning / plain:       {pt / lt:10.3f}   (target >= 0.9)")
    print(f"achieved: {samples * flops_per_sample / lt / 1e9:.1f} GFLOP/s; "
          f"2048^3 matmul: {peak:.1f} GFLOP/s ({samples * flops_per_sample / lt / 1e9 / peak:.0%} of it)")


if __name__ == "__main__":
    main()
