"""Prefect flows, schedules and deployments around the plain-Python pipeline (the only prefect importers)."""

from flows.pretrain import extra_hooks, pretrain_flow

__all__ = ["extra_hooks", "pretrain_flow"]
