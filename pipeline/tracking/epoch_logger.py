"""Lightning's MLflow logger for a layer's or fine-tuning's child run, with its epoch metrics batched."""

from __future__ import annotations

import time
from collections.abc import Mapping

from mlflow.entities import Metric
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities import rank_zero_only

from pipeline.process import interrupts
from pipeline.tracking import describe

FLUSH_SECONDS = 2.0  # how stale the live epoch metrics in the MLflow UI may get


@interrupts.shield_methods("flush", "finalize", "log_hyperparams")  # a signal waits for the store's writes
class BufferedMLFlowLogger(MLFlowLogger):
    """Lightning's MLflow logger bound to a run, writing its epoch metrics at most every FLUSH_SECONDS."""

    # Each write is a database commit (~10-50 ms on sqlite here): per-epoch writes cost a 60-epoch digits
    # layer over a second. Buffered, every epoch still gets its own point; finalize (end of fit, and on
    # failure) writes the rest before the run is marked terminated.

    def __init__(self, run_id: str, tracking_uri: str, charts: describe.Charts = describe.LAYER_CHARTS) -> None:
        super().__init__(run_id=run_id, tracking_uri=tracking_uri)
        self.charts = charts  # which of each epoch's metrics are charted (describe.charted_keys)
        self.pending: list[Metric] = []
        self.flushed_at = time.monotonic()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Points are indexed by epoch (Lightning adds it), not by optimizer step, which differs under DDP;
        # describe.epoch_points keeps the charted keys and numbers epochs from 1.
        row = dict(metrics) if "epoch" in metrics else {**metrics, "epoch": step or 0}
        self.pending += describe.epoch_points([row], charts=self.charts)
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    @rank_zero_only
    def flush(self) -> None:
        """Write the buffered metric points."""
        for start in range(0, len(self.pending), 1000):
            self.experiment.log_batch(self.run_id, metrics=self.pending[start : start + 1000])
        self.pending, self.flushed_at = [], time.monotonic()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.flush()
        super().finalize(status)
