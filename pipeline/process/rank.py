"""This process's rank among data-parallel workers, read without importing Lightning."""

from __future__ import annotations

import os

from lightning_utilities.core.rank_zero import rank_zero_only  # the object Lightning keeps the rank on

# Where Lightning reads the rank from before a strategy sets it (lightning_fabric.utilities.rank_zero._get_rank).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def process_rank() -> int:
    """The rank Lightning gave this process (``rank_zero_only.rank``), else the one a launcher set: 0 alone."""
    rank = getattr(rank_zero_only, "rank", None)  # set once Lightning is imported, and by its strategies
    if rank is not None:
        return int(rank)
    return next((int(os.environ[key]) for key in RANK_VARIABLES if os.environ.get(key) is not None), 0)
