"""Prefect artifacts of a pretraining run: the results table, a link to the MLflow run, the model version."""

from __future__ import annotations

from urllib.parse import quote

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipeline.results import PretrainResult
from pipeline.tables import markdown_table

LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves a sqlite store


def mlflow_base_url(tracking_uri: str) -> str:
    """The MLflow UI serving ``tracking_uri``: the server itself, or `make ui` for a local store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


@task(name="publish-artifacts", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE, persist_result=False)
def publish_artifacts(result: PretrainResult) -> None:
    """Markdown results table, link to the MLflow parent run, and the registered model version."""
    tracked = result.tracked
    name, value, _ = result.headline()
    create_markdown_artifact(
        key="sae-results",
        markdown=f"# {result.config.name}: {result.data.source}\n\n{markdown_table(result.rows())}\n\n"
        f"**{name}**: {value:.4f}\n",
        description="Per-layer losses, sparsity, probe and fine-tuned accuracies",
    )
    if tracked is None:
        return
    base = mlflow_base_url(tracked.tracking_uri)
    local = "" if base != LOCAL_UI else " (local store: open it with `make ui`)"
    run_url = tracked.run_url or f"{base}/#/experiments/{tracked.experiment_id}/runs/{tracked.run_id}"
    create_link_artifact(key="mlflow-run", link=run_url, link_text=f"MLflow run {tracked.run_id}{local}",
                         description=f"MLflow parent run at {tracked.tracking_uri}")
    reg = tracked.registration
    if reg is None:
        return
    create_link_artifact(
        key="sae-model-version",
        link=f"{base}/#/models/{quote(reg.model_name)}/versions/{reg.model_version}",
        link_text=f"{reg.model_name} version {reg.model_version} (@{reg.alias}): {reg.model_uri}{local}",
        description=reg.reason,
    )
