"""What the process starting a flow hands it beyond its parameters: the data the preflight read and checked,
hooks of its own (progress printers, test probes) and the raw-input probe it started.

Flow parameters travel through Prefect's API as JSON, so these live objects cannot be parameters. The caller
sets a ``FlowSession`` for the block that runs the flow (``use_session``); the flow reads it once, at its
start (``current_session``), and passes each part on explicitly. A deployment's run sees the empty session.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData
    from pipeline.run.hooks import PipelineHooks


def data_key(config: PipelineConfig) -> str:
    """What the data depends on: the seed (the split) and the data section."""
    return f"{config.seed}:{config.data.model_dump_json()}"


@dataclass(frozen=True)
class FlowSession:
    """Live objects for the flows run in one block; every part is optional."""

    data: LoadedData | None = None  # read and checked for the config whose data_key is data_for
    data_for: str | None = None
    hooks: tuple[PipelineHooks, ...] = ()  # added to the pretrain flow's own (tracking, progress)
    raw_probe: Future[float] | None = None  # the raw-input probe of ``data``, started ahead
    search: str | None = None  # markdown: the search whose best config the flow trains (its run's description)

    def data_of(self, config: PipelineConfig) -> LoadedData | None:
        """The preloaded data when ``config`` reads the same data, else None (the flow reads it)."""
        return self.data if self.data is not None and self.data_for == data_key(config) else None

    def raw_probe_of(self, config: PipelineConfig) -> Future[float] | None:
        """The raw probe started ahead when ``config`` reads the preloaded data, else None."""
        return self.raw_probe if self.data_of(config) is not None else None


_EMPTY = FlowSession()
_SESSION: ContextVar[FlowSession | None] = ContextVar("sae_pipeline_flow_session", default=None)


@contextmanager
def use_session(session: FlowSession) -> Iterator[FlowSession]:
    """Flows started in the block (in this thread) read ``session``."""
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def current_session() -> FlowSession:
    """The session set by the caller of the running flow (empty outside ``use_session``)."""
    return _SESSION.get() or _EMPTY
