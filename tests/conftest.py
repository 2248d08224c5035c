"""Suite-wide process settings, applied before any test module imports torch."""

import gc

from pipeline.process.runtime import quiet_runtime

quiet_runtime()


def pytest_collection_finish(session):
    """Everything imported by now (torch, Lightning, Prefect, MLflow) lives to the end: collections skip it."""
    gc.freeze()
