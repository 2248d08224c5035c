"""Mini-batches by slicing a shuffled index: no per-sample Dataset, no collate."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist

from sae.chunks import release_pages, row_chunks


class ShuffledBatches:
    """Iterable of (batch, d_in) float32 tensors, reshuffled every epoch from ``seed + epoch``.

    In-memory data (a tensor or ndarray) is shuffled row by row. A ``np.memmap`` is read in contiguous
    blocks of ``block_rows`` rows visited in shuffled order and shuffled within each block (block shuffle),
    so a file larger than RAM streams sequentially-ish from disk.
    """

    def __init__(
        self,
        data: torch.Tensor | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        block_rows: int | None = None,
        labels: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be a positive integer")
        self.memmapped = isinstance(data, np.memmap)
        self.data = data if self.memmapped else _as_tensor(data)
        self.n = int(data.shape[0])
        self.batch_size = min(batch_size, self.n)
        self.seed = seed
        self.shuffle = shuffle
        self.block_rows = max(self.batch_size, block_rows or self.batch_size * 64)
        self.epoch = 0
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(np.asarray(labels))
        # Labels live where the data lives, so a batch is sliced on the device without a copy.
        self.labels = None if labels is None else labels.to(dtype=torch.long, device=self.data.device)
        if self.labels is not None and self.memmapped:
            raise ValueError("labelled batches need in-memory data; load the array before passing labels")

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yields (batch, d_in) tensors, or (x, y) pairs when labels were given."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        if self.memmapped:
            yield from self._blocks(gen)
            return
        data = self.data
        assert isinstance(data, torch.Tensor)
        order = torch.randperm(self.n, generator=gen) if self.shuffle else torch.arange(self.n)
        order = order.to(data.device)
        rank, world = _rank_and_world()
        for start in range(0, self.n, self.batch_size):
            # Under data parallelism every rank draws the same global batch and keeps its own share of it.
            idx = order[start : start + self.batch_size]
            if idx.numel() < world:
                continue  # a last global batch too small to give every rank a row
            idx = idx[rank::world]
            yield data[idx] if self.labels is None else (data[idx], self.labels[idx])

    def _blocks(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        rank, world = _rank_and_world()
        for batch in self._block_batches(gen):
            if batch.shape[0] >= world:
                yield batch[rank::world]

    def _block_batches(self, gen: torch.Generator) -> Iterator[torch.Tensor]:
        # Batches never straddle blocks except through the carry-over, so every row is seen once per epoch.
        starts = torch.arange(0, self.n, self.block_rows)
        if self.shuffle:
            starts = starts[torch.randperm(len(starts), generator=gen)]
        carry: torch.Tensor | None = None
        for start in starts.tolist():
            block = torch.from_numpy(np.array(self.data[start : start + self.block_rows], dtype=np.float32))
            release_pages(self.data, start, start + self.block_rows)  # the copy is ours; keep RSS at one block
            if self.shuffle:
                block = block[torch.randperm(block.shape[0], generator=gen)]
            if carry is not None:
                block = torch.cat([carry, block])
            full = (block.shape[0] // self.batch_size) * self.batch_size
            for s in range(0, full, self.batch_size):
                yield block[s : s + self.batch_size]
            carry = block[full:] if full < block.shape[0] else None
        if carry is not None and carry.shape[0] > 0:
            yield carry


class DrawnBatches:
    """Iterable of ``steps`` (x_labeled, y_labeled, x_unlabeled) triples, one per optimizer step: ``batch_labeled``
    labeled rows and ``batch_unlabeled`` rows of ``unlabeled``, each drawn with replacement (a hundred labeled
    rows are revisited many times, so there is no epoch over them); redrawn from ``seed + pass`` each pass.
    Everything stays on the data's device."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, unlabeled: torch.Tensor, *, batch_labeled: int,
                 batch_unlabeled: int, steps: int, seed: int = 0) -> None:
        if min(batch_labeled, batch_unlabeled, steps) < 1:
            raise ValueError(f"batch_labeled={batch_labeled}, batch_unlabeled={batch_unlabeled}, steps={steps}: "
                             "each must be a positive integer")
        if x.shape[0] == 0 or unlabeled.shape[0] == 0:
            raise ValueError("DrawnBatches needs at least one labeled and one unlabeled row")
        self.x, self.y, self.unlabeled = x, y.to(dtype=torch.long, device=x.device), unlabeled
        self.batch_labeled, self.batch_unlabeled, self.steps = batch_labeled, batch_unlabeled, steps
        self.seed, self.passes = seed, 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        for _ in range(self.steps):
            labeled = torch.randint(self.x.shape[0], (self.batch_labeled,), generator=gen).to(self.x.device)
            rows = torch.randint(self.unlabeled.shape[0], (self.batch_unlabeled,), generator=gen)
            yield self.x[labeled], self.y[labeled], self.unlabeled[rows.to(self.unlabeled.device)]


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _as_tensor(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        return data if data.dtype in (torch.float32, torch.float64) else data.float()
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


__all__ = ["DrawnBatches", "ShuffledBatches", "release_pages", "row_chunks"]
