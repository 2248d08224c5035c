"""Lightning's routine notices, silenced on request: never on import (importing sae changes no global state)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# Lightning announces hardware and tips at INFO on every Trainer; the pipeline prints its own progress.
LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda", "lightning_fabric")
# Advice that does not apply to how sae trains: batches come from a sized iterable (no DataLoader, no
# workers), there is no val_dataloader (validation runs inside the module), and epoch metrics are summed
# over ranks by EpochStats itself (so the sync_dist advice does not apply).
LIGHTNING_WARNINGS = (
    ".*does not have many workers.*",
    ".*isn't a DataLoader.*",
    ".*no `val_dataloader`.*",
    ".*LeafSpec.*",
    ".*sync_dist=True.*",
)


def silence_lightning() -> None:
    """Process-wide: drop LIGHTNING_WARNINGS and raise LIGHTNING_LOGGERS to WARNING (for a CLI or a test run)."""
    for pattern in LIGHTNING_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, logging.WARNING))


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """silence_lightning() inside the block only: the warning filters and logger levels are restored after."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        silence_lightning()
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
