"""Does a .npy larger than memory train at near in-memory speed with bounded resident memory?

Generates a float32 .npy (uniform [0, 1], 256 features) of ``--gigabytes`` GB, runs a 2-layer pipeline
(64 then 32 kl units, 1 epoch each, batch 1024, no fine-tuning) on it through ``pretrain_stack``, and the same
on a 400 MB file both memory-mapped and read into memory. Each run is its own subprocess, so its peak RSS
(VmHWM) is its own. Throughput is rows x layers / the layers' training seconds (LayerResult.seconds:
training plus encoding the codes for the next layer). Generated files are deleted afterwards.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/out_of_core.py [--gigabytes 4] [--dir /tmp]

Targets (issue 6): memmapped/in-memory throughput >= 0.7 on the 400 MB file; peak RSS < 1.5 GB on the large one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sae.batches import release_pages

D = 256  # features
CHUNK_ROWS = 65_536
SMALL_BYTES = 400 * 10**6


def write_uniform_npy(path: Path, n_bytes: int, seed: int = 0) -> int:
    """A (n, D) float32 .npy of about ``n_bytes`` with values uniform in [0, 1], written in chunks; returns n."""
    n = n_bytes // (4 * D)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, D))
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK_ROWS):
        out[start : start + CHUNK_ROWS] = rng.random((min(CHUNK_ROWS, n - start), D), dtype=np.float32)
        release_pages(out, start, start + CHUNK_ROWS)  # keep this process small too
    out.flush()
    del out
    return n


def child(path: str, in_memory: bool) -> None:
    """One measured pipeline run (in its own process); prints a JSON line."""
    import pipeline.data.loading
    from pipeline.config import PipelineConfig
    from pipeline.run.greedy import pretrain_stack

    if in_memory:  # take the small-file path: the whole array read into RAM and split by shuffling
        pipeline.data.loading.LARGE_FILE_BYTES = 2**62
    config = PipelineConfig.from_dict({
        "name": "out-of-core",
        "data": {"source": path, "scale": "unit"},
        "defaults": {"epochs": 1, "batch_size": 1024, "lr": 0.01, "sparsity": "kl"},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 64}, {"hidden": 32}],
        "finetune": {"epochs": 0},
    })
    started = time.perf_counter()
    result = pretrain_stack(config)
    total = time.perf_counter() - started
    rows = int(result.data.X_train.shape[0])
    seconds = sum(layer.seconds for layer in result.layers)
    print(json.dumps({
        "rows": rows,
        "memmapped": isinstance(result.layers[0].codes.train, np.memmap) or isinstance(result.data.X_train, np.memmap),
        "train_memmap": isinstance(result.data.scaled().train, np.memmap),
        "layer_seconds": seconds,
        "total_seconds": total,
        "samples_per_s": rows * len(result.layers) / seconds,
        "peak_rss_mb": peak_rss_mb(),
    }))


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM, the high-water mark of its own address space.

    Not ru_maxrss: Linux carries that across exec from the parent's address space (posix_spawn/vfork),
    so a child would report the parent's peak (here: writing the generated file).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, *, in_memory: bool, scratch: Path) -> dict:
    """Run ``child`` in a subprocess whose temporary files (scaled copies, codes) go to ``scratch``."""
    env = os.environ | {"TMPDIR": str(scratch), "OMP_WAIT_POLICY": "PASSIVE"}
    args = [sys.executable, __file__, "--child", str(path)] + (["--in-memory"] if in_memory else [])
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise RuntimeError(f"child run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=4.0, help="size of the large file (GB, 10^9 bytes)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the generated files go (deleted after)")
    parser.add_argument("--skip-large", action="store_true", help="only the 400 MB comparison")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.in_memory)
        return
    large_bytes = int(args.gigabytes * 10**9)
    need = (large_bytes * 2.5 if not args.skip_large else SMALL_BYTES * 2.5)
    free = shutil.disk_usage(args.dir).free
    if free < need:
        sys.exit(f"{args.dir}: {free / 1e9:.1f} GB free, need ~{need / 1e9:.1f} GB; pass --dir or --gigabytes")
    root = Path(tempfile.mkdtemp(prefix="sae-out-of-core-", dir=args.dir))
    try:
        small = root / "small.npy"
        write_uniform_npy(small, SMALL_BYTES)
        print(f"400 MB file: {small.stat().st_size / 1e6:.0f} MB, {np.load(small, mmap_mode='r').shape}")
        mapped = measure(small, in_memory=False, scratch=root)
        memory = measure(small, in_memory=True, scratch=root)
        for name, r in (("memory-mapped", mapped), ("in memory", memory)):
            print(f"  {name:14s} {r['samples_per_s']:10.0f} samples/s  layers {r['layer_seconds']:.1f} s  "
                  f"total {r['total_seconds']:.1f} s  peak RSS {r['peak_rss_mb']:.0f} MB  "
                  f"(train memmap: {r['train_memmap']})")
        ratio = mapped["samples_per_s"] / memory["samples_per_s"]
        print(f"throughput ratio memory-mapped / in memory: {ratio:.2f} (target >= 0.7)")
        small.unlink()
        if not args.skip_large:
            large = root / "large.npy"
            t = time.perf_counter()
            n = write_uniform_npy(large, large_bytes)
            print(f"{args.gigabytes:g} GB file: {large.stat().st_size / 1e9:.2f} GB, ({n}, {D}), "
                  f"written in {time.perf_counter() - t:.0f} s")
            big = measure(large, in_memory=False, scratch=root)
            print(f"  memory-mapped  {big['samples_per_s']:10.0f} samples/s  layers {big['layer_seconds']:.1f} s  "
                  f"total {big['total_seconds']:.1f} s  (train memmap: {big['train_memmap']})")
            print(f"peak RSS of the {args.gigabytes:g} GB run: {big['peak_rss_mb']:.0f} MB (target < 1500 MB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
