"""Suite-wide process settings, applied before any test module imports torch."""

import gc
import os

from pipeline.process.runtime import quiet_runtime

quiet_runtime()


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers), the workers share the cores instead of each running
    torch on all of them: oversubscribed, CPU-bound tests ran 3x slower."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_finish(session):
    """Everything imported by now (torch, Lightning, Prefect, MLflow) lives to the end: collections skip it."""
    gc.freeze()
